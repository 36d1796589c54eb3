//! Who is who in a run: publishers and subscribers spread over channels ([`Topology`]), over
//! the servers of a cluster ([`Placement`]), and over loadgen processes ([`Share`]).
//!
//! Identities are global: publisher `p` and subscriber `s` are the same in every loadgen
//! process of a run, so that a message's stamp (its publisher and sequence number) means the
//! same to every subscriber, whichever process sent and received it.

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// How publishers and subscribers are spread over channels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    pub channels: u32,
    pub publishers: u32,
    pub subscribers: u32,
}

impl Topology {
    /// Channel of publisher `p` (publishers go round-robin over channels).
    pub fn channel_of_publisher(&self, p: u32) -> u32 {
        p % self.channels.max(1)
    }
    /// Channel of subscriber `s` (round-robin too).
    pub fn channel_of_subscriber(&self, s: u32) -> u32 {
        s % self.channels.max(1)
    }
    /// Index of publisher `p` among the publishers of its channel.
    pub fn index_in_channel(&self, p: u32) -> u32 {
        p / self.channels.max(1)
    }
    /// Publishers on channel `ch`.
    pub fn publishers_in_channel(&self, ch: u32) -> u32 {
        let k = self.channels.max(1);
        (self.publishers + k - 1 - ch) / k
    }
    /// Subscribers on channel `ch`.
    pub fn subscribers_in_channel(&self, ch: u32) -> u32 {
        let k = self.channels.max(1);
        (self.subscribers + k - 1 - ch) / k
    }
}

/// Which server (of several `--url`s: the nodes of a cluster) each client connects to:
/// each channel's subscribers round-robin over all of them (the k-th subscriber of a channel on
/// server k mod N, so that every channel spans every server), publishers round-robin over
/// `publish_on`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub targets: u32,
    /// The servers publishers connect to (indices of the targets).
    pub publish_on: Vec<u32>,
}

impl Placement {
    /// One server for everyone.
    pub fn single() -> Placement {
        Placement {
            targets: 1,
            publish_on: vec![0],
        }
    }

    pub fn subscriber_target(&self, s: u32, topology: &Topology) -> u32 {
        (s / topology.channels.max(1)) % self.targets.max(1)
    }

    pub fn publisher_target(&self, p: u32) -> u32 {
        match self.publish_on.len() {
            0 => p % self.targets.max(1),
            n => self.publish_on[p as usize % n],
        }
    }
}

/// The clients one loadgen process runs: ranges of the run's global subscriber and publisher
/// numbers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Share {
    pub subscribers: Range<u32>,
    pub publishers: Range<u32>,
}

impl Share {
    /// Every client of the run.
    pub fn all(topology: &Topology) -> Share {
        Share {
            subscribers: 0..topology.subscribers,
            publishers: 0..topology.publishers,
        }
    }

    /// The run's clients split into `n` contiguous shares as even as can be.
    pub fn split(topology: &Topology, n: u32) -> Vec<Share> {
        let n = n.max(1);
        let cut = |total: u32, k: u32| (u64::from(total) * u64::from(k) / u64::from(n)) as u32;
        (0..n)
            .map(|k| Share {
                subscribers: cut(topology.subscribers, k)..cut(topology.subscribers, k + 1),
                publishers: cut(topology.publishers, k)..cut(topology.publishers, k + 1),
            })
            .collect()
    }

    /// Subscribers of this share on channel `ch`.
    pub fn subscribers_in_channel(&self, topology: &Topology, ch: u32) -> u64 {
        self.subscribers
            .clone()
            .filter(|&s| topology.channel_of_subscriber(s) == ch)
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_round_robin() {
        let t = Topology {
            channels: 3,
            publishers: 7,
            subscribers: 10,
        };
        assert_eq!(t.channel_of_publisher(4), 1);
        assert_eq!(t.index_in_channel(4), 1);
        assert_eq!(
            (0..3)
                .map(|c| t.publishers_in_channel(c))
                .collect::<Vec<_>>(),
            [3, 2, 2]
        );
        assert_eq!((0..3).map(|c| t.subscribers_in_channel(c)).sum::<u32>(), 10);
    }

    #[test]
    fn shares_cover_the_run_once_and_placement_follows_the_targets() {
        let t = Topology {
            channels: 4,
            publishers: 3,
            subscribers: 1001,
        };
        let shares = Share::split(&t, 4);
        assert_eq!(shares.len(), 4);
        assert_eq!(shares[0].subscribers.start, 0);
        assert_eq!(shares[3].subscribers.end, 1001);
        for w in shares.windows(2) {
            assert_eq!(w[0].subscribers.end, w[1].subscribers.start);
            assert_eq!(w[0].publishers.end, w[1].publishers.start);
        }
        let per_channel: u64 = (0..4)
            .map(|ch| {
                shares
                    .iter()
                    .map(|s| s.subscribers_in_channel(&t, ch))
                    .sum::<u64>()
            })
            .sum();
        assert_eq!(per_channel, 1001);
        assert_eq!(Share::all(&t).subscribers, 0..1001);
        let p = Placement {
            targets: 3,
            publish_on: vec![0],
        };
        assert_eq!((p.subscriber_target(4, &t), p.publisher_target(5)), (1, 0));
        // Channel 1's subscribers (1, 5, 9, ...) land on servers 0, 1, 2, 0, ...
        let on: Vec<u32> = [1, 5, 9, 13]
            .iter()
            .map(|&s| p.subscriber_target(s, &t))
            .collect();
        assert_eq!(on, [0, 1, 2, 0]);
        let spread = Placement {
            targets: 3,
            publish_on: vec![],
        };
        assert_eq!(spread.publisher_target(5), 2);
        assert_eq!(Placement::single().publisher_target(9), 0);
    }
}
