//! Comparing on Centrifugo's client protocol (`loadgen compare --protocol centrifugo`): the
//! run's secrets, Centrifugo itself as a compared server, and what ringcast is started with
//! to serve the same protocol under the same rules.
//!
//! Why it exists: the relay comparison needs none of this (no tokens, no API, no config
//! file); keeping it here leaves [`super::peers`] about finding and starting servers. Both
//! servers get the same secrets, generated per run: the HS256 secret that client tokens are
//! signed with (one token, minted here, is what every connection sends) and the key of the
//! server API (`--publish-via api`). They are throwaway values of one benchmark run, written
//! into its output directory beside Centrifugo's config, so that a run can be repeated by hand.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use super::peers::{PeerError, ServerDef};
use crate::load::token::{self, CENTRIFUGO_ALLOW};

/// The Centrifugo release the comparison is meant for (`peers/setup centrifugo` builds it).
pub const EXPECTED_VERSION: &str = "v6.9.1";

/// The secrets of one run and the files that hold them.
#[derive(Debug, Clone)]
pub struct CentrifugoSetup {
    /// The HS256 secret of client tokens, and its file (ringcast's --token-hmac-secret-file).
    secret: String,
    pub secret_file: PathBuf,
    /// The server API's key, and its file (ringcast's --api-key-file, loadgen's API key).
    api_key: String,
    pub api_key_file: PathBuf,
    /// Where Centrifugo's config is written (rewritten with the port before each start).
    pub config_file: PathBuf,
    /// The client token every connection sends in its connect command.
    pub token: String,
}

/// `n` random bytes as hex digits.
fn random_hex(n: usize) -> std::io::Result<String> {
    let mut bytes = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

impl CentrifugoSetup {
    /// New secrets for a run writing into `dir` (nothing is written yet: see
    /// [`CentrifugoSetup::write`]).
    pub fn new(dir: &Path) -> Result<CentrifugoSetup, String> {
        let secret = random_hex(32).map_err(|e| format!("/dev/urandom: {e}"))?;
        let api_key = random_hex(16).map_err(|e| format!("/dev/urandom: {e}"))?;
        let token = token::mint(secret.as_bytes(), CENTRIFUGO_ALLOW)?;
        Ok(CentrifugoSetup {
            secret,
            secret_file: dir.join("token-secret"),
            api_key,
            api_key_file: dir.join("api-key"),
            config_file: dir.join("centrifugo.json"),
            token,
        })
    }

    /// Writes the secret and the API key into their files (readable by the owner only).
    pub fn write(&self) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        for (path, text) in [
            (&self.secret_file, &self.secret),
            (&self.api_key_file, &self.api_key),
        ] {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(path)?;
            std::io::Write::write_all(&mut f, text.as_bytes())?;
        }
        Ok(())
    }

    /// Centrifugo's config, `{port}` where the port goes: the memory engine (its default),
    /// history of 100 publications for 300 s with recovery forced (ringcast's defaults), any
    /// client with a valid token may subscribe and publish on every channel (as the token's
    /// caps allow on ringcast), pings every 25 s (as ringcast's), the API with the run's key.
    pub fn config_template(&self) -> String {
        let config = serde_json::json!({
            "log": {"level": "error"},
            "http_server": {"address": "127.0.0.1", "port": "{port}"},
            "usage_stats": {"disabled": true},
            "http_api": {"key": self.api_key},
            "client": {
                "token": {"hmac_secret_key": self.secret},
                "ping_interval": "25s"
            },
            "channel": {
                "without_namespace": {
                    "history_size": 100,
                    "history_ttl": "300s",
                    "force_recovery": true,
                    "allow_subscribe_for_client": true,
                    "allow_publish_for_client": true
                }
            }
        });
        // A JSON value always serializes.
        serde_json::to_string_pretty(&config)
            .unwrap_or_default()
            .replace("\"{port}\"", "{port}")
    }

    /// What ringcast is started with beside its usual flags: the token secret and the API
    /// key (its Centrifugo endpoint, history size and TTL are on by default).
    pub fn ringcast_args(&self) -> Vec<String> {
        vec![
            "--token-hmac-secret-file".into(),
            self.secret_file.display().to_string(),
            "--api-key-file".into(),
            self.api_key_file.display().to_string(),
        ]
    }

    /// What the report says of ringcast's configuration under this protocol.
    pub fn ringcast_notes() -> &'static str {
        "Centrifugo's client protocol on /connection/websocket; history 100 publications / 300 s \
         per channel (its defaults); client tokens required (HS256, the run's secret; caps allow \
         sub, pub, hst, prs on every channel); server API with the run's key; pings every 25 s"
    }
}

/// Centrifugo from `peers/centrifugo/bin/centrifugo` (built by `peers/setup centrifugo`),
/// configured by `setup`'s config file, on one core: `GOMAXPROCS=1` and pinned like every
/// server.
pub fn define_centrifugo(peers: &Path, setup: &CentrifugoSetup) -> Result<ServerDef, PeerError> {
    let bin = peers.join("centrifugo").join("bin").join("centrifugo");
    if !bin.is_file() {
        return Err(PeerError::NotInstalled {
            what: format!("{} missing", bin.display()),
            name: "centrifugo".into(),
        });
    }
    let version = std::process::Command::new(&bin)
        .arg("version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .ok_or_else(|| PeerError::NotInstalled {
            what: format!("{} version failed", bin.display()),
            name: "centrifugo".into(),
        })?;
    let off_version = if version.contains(EXPECTED_VERSION) {
        String::new()
    } else {
        format!(" (NOT the {EXPECTED_VERSION} the comparison is meant for)")
    };
    Ok(ServerDef {
        name: "centrifugo".into(),
        program: bin,
        args: vec!["--config".into(), setup.config_file.display().to_string()],
        deflate_args: None,
        version: format!("{version}{off_version}"),
        notes: "one core: GOMAXPROCS=1 and pinned like every server; memory engine (the \
                default); history 100 publications / 300 s per channel with force_recovery \
                (ringcast's defaults); any client with a valid token (HS256, the run's secret) \
                may subscribe and publish on every channel (allow_subscribe_for_client, \
                allow_publish_for_client: the rights ringcast's token caps give); HTTP API with \
                the run's key; pings every 25 s; log level error; usage stats off"
            .into(),
        env: vec![("GOMAXPROCS".into(), "1".into())],
        config: Some((setup.config_file.clone(), setup.config_template())),
        ready_by_port: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_is_json_with_the_port_in_place() {
        let s = CentrifugoSetup::new(Path::new("/tmp/x")).unwrap();
        assert_eq!(s.secret.len(), 64);
        let text = s.config_template().replace("{port}", "8123");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["http_server"]["port"], 8123);
        assert_eq!(v["client"]["token"]["hmac_secret_key"], s.secret.as_str());
        assert_eq!(v["http_api"]["key"], s.api_key.as_str());
        let ns = &v["channel"]["without_namespace"];
        assert_eq!(ns["history_size"], 100);
        assert_eq!(ns["history_ttl"], "300s");
        assert_eq!(ns["force_recovery"], true);
        assert_eq!(s.token.split('.').count(), 3);
        assert_eq!(s.ringcast_args()[1], "/tmp/x/token-secret");
    }
}
