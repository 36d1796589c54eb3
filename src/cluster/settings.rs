//! The cluster's settings, taken from the command line and checked before any thread starts.

use super::subject;
use crate::config::{ClusterDelivery, Config};
use std::hash::{BuildHasher, Hasher};
use std::io;
use thiserror::Error;

/// Why the cluster link could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    #[error("--cluster must be a nats://HOST:PORT URL, not {0:?}")]
    BadUrl(String),
    #[error(transparent)]
    Subject(#[from] subject::SubjectError),
    #[error("cannot start the cluster link thread: {0}")]
    Spawn(io::Error),
}

/// What the cluster link needs to know (from the command line).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    /// The node's name at the broker (its connection name) and in logs.
    pub node_name: String,
    /// A random number naming this node in every envelope it publishes.
    pub node_id: u64,
    pub through_broker: bool,
    pub queue_bytes: usize,
    pub prefix: String,
    /// `--max-message`: a block from the broker with a larger message is refused.
    pub max_message: usize,
}

impl ClusterConfig {
    /// The cluster settings of `config`, if `--cluster` is set.
    pub fn from_config(config: &Config) -> Result<Option<ClusterConfig>, ClusterError> {
        let Some(url) = &config.cluster else {
            return Ok(None);
        };
        if !url.starts_with("nats://") || url.len() <= "nats://".len() {
            return Err(ClusterError::BadUrl(url.clone()));
        }
        subject::check_prefix(&config.cluster_prefix)?;
        let node_name = config.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("ringcast-{}-{}", host.trim(), std::process::id())
        });
        Ok(Some(ClusterConfig {
            url: url.clone(),
            node_name,
            node_id: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            through_broker: config.cluster_delivery == ClusterDelivery::Broker,
            queue_bytes: config.cluster_queue,
            prefix: config.cluster_prefix.clone(),
            max_message: config.max_message,
        }))
    }
}
