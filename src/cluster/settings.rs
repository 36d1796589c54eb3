//! The cluster's settings, taken from the command line and checked before any thread starts.

use super::broker::BrokerKind;
use super::subject;
use crate::config::{ClusterDelivery, Config};
use std::hash::{BuildHasher, Hasher};
use std::io;
use thiserror::Error;

/// Why the cluster link could not start.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// `schemes`: "nats://HOST:PORT or tls://HOST:PORT" (from `BrokerKind::accepted`).
    #[error("--cluster must be a {schemes} URL, not {url:?}")]
    BadUrl { url: String, schemes: String },
    #[error("cluster credentials: {path}: {source}")]
    Credentials {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Subject(#[from] subject::SubjectError),
    #[error("cannot start the cluster link thread: {0}")]
    Spawn(io::Error),
}

/// What the cluster link needs to know (from the command line).
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub url: String,
    /// The broker the URL's scheme chooses.
    pub(super) broker: &'static BrokerKind,
    /// The node's name at the broker (its connection name) and in logs.
    pub node_name: String,
    /// A random number naming this node in every envelope it publishes.
    pub node_id: u64,
    pub through_broker: bool,
    pub queue_bytes: usize,
    pub prefix: String,
    /// `--max-message`: a block from the broker with a larger message is refused.
    pub max_message: usize,
    /// How the node proves who it is to the broker.
    pub credentials: Credentials,
    /// `--cluster-ca-file`.
    pub ca_file: Option<std::path::PathBuf>,
}

/// How a node authenticates to the broker (from `--cluster-user` and the other files).
#[derive(Clone, Default)]
pub enum Credentials {
    /// None, or what the URL carries.
    #[default]
    None,
    UserPassword {
        user: String,
        password: String,
    },
    Token(String),
    /// A NATS credentials file, read by the client.
    CredsFile(std::path::PathBuf),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets themselves.
        match self {
            Credentials::None => write!(f, "None"),
            Credentials::UserPassword { user, .. } => write!(f, "UserPassword({user}, ***)"),
            Credentials::Token(_) => write!(f, "Token(***)"),
            Credentials::CredsFile(path) => write!(f, "CredsFile({})", path.display()),
        }
    }
}

/// A secret read from `path`, without its trailing newline.
fn read_secret(path: &std::path::Path) -> Result<String, ClusterError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|source| ClusterError::Credentials {
            path: path.display().to_string(),
            source,
        })
}

impl ClusterConfig {
    /// The cluster settings of `config`, if `--cluster` is set.
    pub fn from_config(config: &Config) -> Result<Option<ClusterConfig>, ClusterError> {
        let Some(url) = &config.cluster else {
            return Ok(None);
        };
        let broker = BrokerKind::for_url(url).ok_or_else(|| ClusterError::BadUrl {
            url: url.clone(),
            schemes: BrokerKind::accepted(),
        })?;
        let credentials = match (
            &config.cluster_user,
            &config.cluster_password_file,
            &config.cluster_token_file,
            &config.cluster_creds_file,
        ) {
            (Some(user), Some(password), _, _) => Credentials::UserPassword {
                user: user.clone(),
                password: read_secret(password)?,
            },
            (_, _, Some(token), _) => Credentials::Token(read_secret(token)?),
            (_, _, _, Some(creds)) => Credentials::CredsFile(creds.clone()),
            _ => Credentials::None,
        };
        subject::check_prefix(&config.cluster_prefix)?;
        let node_name = config.node_name.clone().unwrap_or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("ringcast-{}-{}", host.trim(), std::process::id())
        });
        Ok(Some(ClusterConfig {
            url: url.clone(),
            broker,
            node_name,
            node_id: std::collections::hash_map::RandomState::new()
                .build_hasher()
                .finish(),
            through_broker: config.cluster_delivery == ClusterDelivery::Broker,
            queue_bytes: config.cluster_queue,
            prefix: config.cluster_prefix.clone(),
            max_message: config.max_message,
            credentials,
            ca_file: config.cluster_ca_file.clone(),
        }))
    }
}
