//! What a coordinator and its workers say to each other: one JSON object per line over TCP.
//!
//! A worker says hello (its version, its machine's boot id, its open-file limit); the
//! coordinator has it open its share of the run's connections, then for each step: start at
//! this time, and once every worker has paced, drain against the total sent; a worker answers
//! each with what it did. Histograms travel in HdrHistogram's V2 serialized form, so the
//! coordinator's merge is exact.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::load::recorder::hist_serde;
use crate::load::session::ConnectReport;
use crate::load::spec::{Part, RunSpec};
use crate::load::step::{StepPart, StepSpec};

/// A worker's part of a run and how to run it: the run's spec, whole, and what differs from
/// one worker to the next.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Open {
    pub spec: RunSpec,
    pub part: Part,
}

/// From the coordinator to a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    Open(Box<Open>),
    /// Start a step whose schedule begins at `start_real_ns` on the wall clock, which is
    /// `start_mono_ns` on the coordinator's monotonic clock (used as is on the same machine:
    /// same boot id).
    Step {
        spec: StepSpec,
        start_mono_ns: u64,
        start_real_ns: u64,
        boot_id: String,
    },
    /// Every worker has paced: drain until the deliveries that these sends (by channel, over
    /// all workers) mean for this worker's subscribers have arrived.
    Drain {
        sent_per_channel: Vec<u64>,
    },
    Close,
}

/// From a worker to the coordinator.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum FromWorker {
    Hello {
        version: String,
        pid: u32,
        boot_id: String,
        fd_limit: u64,
    },
    Opened {
        connect: Box<ConnectReport>,
        #[serde(with = "hist_serde")]
        connect_time: Histogram<u64>,
        #[serde(with = "hist_serde")]
        handshake_time: Histogram<u64>,
    },
    Paced {
        sent_per_channel: Vec<u64>,
    },
    Part(Box<StepPart>),
    Failed(String),
    Closed,
}

/// One end of a coordinator-worker connection.
pub struct Line {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

/// A connection broke or said something unexpected.
#[derive(Debug, thiserror::Error)]
pub enum LineError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the other end closed the connection")]
    Closed,
    #[error("unreadable message: {0}")]
    Json(#[from] serde_json::Error),
}

impl Line {
    pub fn new(stream: TcpStream) -> std::io::Result<Line> {
        stream.set_nodelay(true)?;
        Ok(Line {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    pub fn send<T: Serialize>(&mut self, message: &T) -> Result<(), LineError> {
        let mut text = serde_json::to_vec(message)?;
        text.push(b'\n');
        self.writer.write_all(&text)?;
        Ok(())
    }

    /// The next message, waiting at most `timeout` (`None`: for ever).
    pub fn receive<T: DeserializeOwned>(
        &mut self,
        timeout: Option<Duration>,
    ) -> Result<T, LineError> {
        self.reader.get_ref().set_read_timeout(timeout)?;
        let mut text = String::new();
        if self.reader.read_line(&mut text)? == 0 {
            return Err(LineError::Closed);
        }
        Ok(serde_json::from_str(&text)?)
    }
}
