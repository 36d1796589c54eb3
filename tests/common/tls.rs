//! A private certificate authority and a server certificate for 127.0.0.1 signed by it, made
//! by `openssl` (Debian's package, which `scripts/test` installs) for the tests that put TLS in
//! front of or behind ringcast. (A self-signed server certificate would not do: rustls, in the
//! NATS client, does not take a server's own certificate as its trust anchor.)

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The files [`make`] writes.
pub struct Pki {
    /// The CA's certificate: what a client trusts.
    pub ca: PathBuf,
    /// The server's certificate (for IP 127.0.0.1) and key.
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl (scripts/test installs it)");
    assert!(ok.success(), "openssl {args:?} failed");
}

/// Writes a CA and a server certificate (EC P-256, valid for a day) into `dir`.
pub fn make(dir: &Path) -> Pki {
    let path = |name: &str| dir.join(name);
    let s = |p: &PathBuf| p.display().to_string();
    let (ca, ca_key) = (path("ca.pem"), path("ca-key.pem"));
    let (cert, key, csr, ext) = (
        path("cert.pem"),
        path("key.pem"),
        path("cert.csr"),
        path("ext.cnf"),
    );
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=ringcast test CA",
        "-keyout",
        &s(&ca_key),
        "-out",
        &s(&ca),
    ]);
    openssl(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &s(&key),
        "-out",
        &s(&csr),
    ]);
    std::fs::write(
        &ext,
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        &s(&csr),
        "-CA",
        &s(&ca),
        "-CAkey",
        &s(&ca_key),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &s(&ext),
        "-out",
        &s(&cert),
    ]);
    Pki { ca, cert, key }
}
