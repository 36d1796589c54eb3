//! The load itself: what is sent and when, how it is received, and how it is counted.
//!
//! Bottom up: [`clock`] (one monotonic clock, precise sleeps), [`schedule`] (when each message
//! is due), [`payload`] (the stamp every message carries), [`topology`] (who is who: channels,
//! servers, loadgen processes); [`epoll`] (the readiness waits below); [`client`] (targets and
//! connect failures), [`clients`] (how a run's clients speak), [`ramp`] (many connections
//! opened concurrently, each on its own deadline), [`reader`] (epoll receive side), [`rx_time`]
//! (how long its bytes waited for it) and [`parse`] (what the bytes it reads mean), [`pacer`] (send side), [`recorder`] (exact counts
//! and histograms) and [`fanout`] (when a message's last subscriber got it) over [`tally`] (a latency's record in a few instructions); [`spec`] (a run's settings, one serializable value), [`session`] (a set of
//! connections and the rate steps run on it), [`step`] (a step's parts as data, and their
//! merge), [`idle`] (idle connections held to measure memory) and [`storm`] (a reconnect storm
//! with recovery, Centrifugo); [`token`] (client tokens for servers that require them);
//! [`centrifugo`] (Centrifugo's client protocol) and [`http_api`] (publishing through its HTTP
//! API); [`ceiling`] (loadgen's own receive ceiling against a minimal source). Nothing here
//! knows about commands, reports or the servers being compared; below it is only
//! [`crate::sys`].

pub mod ceiling;
pub mod centrifugo;
pub mod client;
pub mod clients;
pub mod clock;
pub mod contention;
pub mod epoll;
pub mod fanout;
pub mod http_api;
pub mod idle;
pub mod inflate;
pub mod pacer;
pub mod parse;
pub mod payload;
pub mod ramp;
pub mod reader;
pub mod recorder;
pub mod rx_time;
pub mod schedule;
pub mod session;
pub mod spec;
pub mod step;
pub mod storm;
pub mod tally;
pub mod token;
pub mod topology;
