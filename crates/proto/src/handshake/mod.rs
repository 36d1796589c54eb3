//! The HTTP/1.1 upgrade handshake (RFC 6455 §4), both roles.
//!
//! [`server`] parses a request that may arrive in pieces, checks every header the RFC requires,
//! and either accepts it (`101 Switching Protocols` with the accept key), recognises a plain
//! `GET` (for `/metrics`), or says precisely what is wrong: a [`HandshakeError`] whose status and
//! one-line reason make the HTTP error answer. [`client`], used by the load generator, builds a
//! request and checks the server's answer. Pure functions over bytes, no I/O.

pub mod client;
pub mod extension;
mod key;
pub mod server;

pub use client::{
    client_request, client_request_with, parse_response, response_extensions, ResponseError,
};
pub use extension::{Deflate, Extension};
pub use key::accept_key;
pub use server::{
    accept_response, accept_response_with, error_response, keep_alive_response, parse_request,
    plain_response, response, HandshakeError, Request, API_PREFIX, MAX_PATH_BYTES,
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_round_trip() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = client_request("127.0.0.1:9001", "/bench", key);
        let Some((
            Request::Upgrade {
                path, accept_key, ..
            },
            _,
        )) = parse_request(req.as_bytes(), 8192).unwrap()
        else {
            panic!("not an upgrade");
        };
        assert_eq!(path, "/bench");
        let resp = accept_response(&accept_key);
        assert_eq!(parse_response(resp.as_bytes(), key), Ok(Some(resp.len())));
        assert_eq!(parse_response(&resp.as_bytes()[..10], key), Ok(None));
        assert_eq!(
            parse_response(resp.as_bytes(), "AAAAAAAAAAAAAAAAAAAAAA=="),
            Err(ResponseError::BadAccept)
        );
        let rejected = error_response(&HandshakeError::MissingHost);
        assert_eq!(
            parse_response(&rejected, key),
            Err(ResponseError::Rejected {
                status: 400,
                body: "missing Host header".into()
            })
        );
    }

    #[test]
    fn client_offer_round_trip() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let req = client_request_with(
            "127.0.0.1:9001",
            "/bench",
            key,
            Some("permessage-deflate; client_max_window_bits"),
        );
        let Some((
            Request::Upgrade {
                accept_key,
                extensions,
                ..
            },
            _,
        )) = parse_request(req.as_bytes(), 8192).unwrap()
        else {
            panic!("not an upgrade");
        };
        assert!(
            Extension::deflate(&extensions).is_some(),
            "no deflate offer seen"
        );
        let resp = accept_response_with(&accept_key, &extensions);
        assert_eq!(parse_response(resp.as_bytes(), key), Ok(Some(resp.len())));
        let answer = response_extensions(resp.as_bytes()).expect("an extensions header");
        assert!(answer.starts_with("permessage-deflate"), "{answer}");
        assert_eq!(
            response_extensions(accept_response(&accept_key).as_bytes()),
            None
        );
    }
}
