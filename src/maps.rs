//! Maps that give memory back: a server that once held 100,000 channels or connections and
//! now holds ten should not keep the tables sized for 100,000.
//!
//! `HashMap` never shrinks on its own. [`remove_and_shrink`] halves a table once it is at
//! most a quarter full, so the cost stays amortised O(1) per removal (a table is rebuilt only
//! after as many removals as it has entries) and the memory follows the live count.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// Tables at or below this capacity are left alone (not worth a rebuild).
const KEEP_CAPACITY: usize = 64;

/// Removes `key`; shrinks the table when it has become mostly empty.
pub(crate) fn remove_and_shrink<K, V, Q>(map: &mut HashMap<K, V>, key: &Q) -> Option<V>
where
    K: Eq + Hash + Borrow<Q>,
    Q: Eq + Hash + ?Sized,
{
    let removed = map.remove(key);
    if map.capacity() > KEEP_CAPACITY && map.len() * 4 <= map.capacity() {
        map.shrink_to((map.len() * 2).max(KEEP_CAPACITY));
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_follows_the_live_count() {
        let mut map = HashMap::new();
        for i in 0..100_000u32 {
            map.insert(i, i);
        }
        let full = map.capacity();
        for i in 0..99_990u32 {
            assert_eq!(remove_and_shrink(&mut map, &i), Some(i));
        }
        assert_eq!(map.len(), 10);
        assert!(
            map.capacity() <= 4 * KEEP_CAPACITY,
            "{} of {full}",
            map.capacity()
        );
        assert_eq!(remove_and_shrink(&mut map, &5), None);
        assert_eq!(map[&99_995], 99_995);
    }
}
