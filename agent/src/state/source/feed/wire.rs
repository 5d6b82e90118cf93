//! The state feed's frames: a 4-byte big-endian length, then one JSON document.
//!
//! JSON rather than a binary encoding: what dominates the feed's size is the
//! number of changes, not their spelling (an address change is about 25
//! bytes), and the stream stays readable with a TLS-terminating debugger.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::state::Workload;

/// The largest frame either side accepts. A full state is sent in chunks
/// well below it (`CHUNK`), so only a broken or hostile peer reaches it.
pub const MAX_FRAME: usize = 32 << 20;

/// Addresses or identities per frame: bounds each frame to about 100 KiB.
pub const CHUNK: usize = 4096;

/// Objects per frame: a slimmed EndpointSlice is about 1.5 KiB of JSON and
/// several times that decoded, and an agent decodes a frame at once, so a
/// full state arrives in frames of a few hundred KiB each rather than
/// megabytes (which an agent's allocator would keep long after the sync).
pub const OBJECT_CHUNK: usize = 128;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Frame {
    /// The agent's first frame: who it is, and the state it already holds.
    Hello {
        token: String,
        node: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<Position>,
    },
    /// The server's answer to a hello it does not accept; the connection
    /// closes after it.
    Refused {
        reason: String,
    },
    /// Everything fed so far is replaced by the changes up to `Synced`.
    Reset,
    /// The answer to a hello's `resume`: the state the agent holds at
    /// `revision` stands, and the batches after it follow, up to `Synced`.
    Resumed {
        revision: u64,
    },
    Changes(Changes),
    /// The state sent is complete up to `revision` of the server's `epoch`.
    Synced {
        revision: u64,
        #[serde(default)]
        epoch: u64,
    },
    /// Sent every second: the server is alive, at `revision`, and its own
    /// watches may have missed changes for the last `behind_ms`.
    Heartbeat {
        revision: u64,
        behind_ms: u64,
    },
}

/// Where an agent's state stands in a server's history. Revisions count
/// from each server process's start, so they mean something only together
/// with the `epoch` that process drew at random.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    pub epoch: u64,
    pub revision: u64,
}

/// One batch of changes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    pub revision: u64,
    /// Identities first used by this batch's addresses.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<Identity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectChange>,
    /// An address and the identity id it now stands for; None: removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<(IpAddr, Option<u32>)>,
    /// Identities no address refers to any more: their ids are not used
    /// again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forgotten: Vec<u32>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.identities.is_empty()
            && self.objects.is_empty()
            && self.addresses.is_empty()
            && self.forgotten.is_empty()
    }
}

/// What every pod of one identity group shares: the same as the agent's
/// compact form of a remote pod (`state::remote`), with its enrolment
/// already decided.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    pub id: u32,
    pub namespace: String,
    pub service_account: String,
    /// The name metrics give the workload (a Deployment's pods: its name).
    pub workload: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub enrolled: bool,
}

impl Identity {
    pub fn of(id: u32, workload: &Workload) -> Self {
        Self {
            id,
            namespace: workload.namespace.clone(),
            service_account: workload.service_account.clone(),
            workload: workload.name.clone(),
            labels: workload
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            enrolled: workload.enrolled,
        }
    }

    /// The workload a remote address of this identity resolves to: no one
    /// pod, on no node of this agent's (see `Workload::is_remote`).
    pub fn into_workload(self) -> Workload {
        Workload {
            uid: String::new(),
            name: self.workload,
            namespace: self.namespace,
            service_account: self.service_account,
            node: String::new(),
            ips: Vec::new(),
            labels: self.labels.into(),
            enrolled: self.enrolled,
        }
    }
}

/// A slimmed object of a relayed kind, or its deletion.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectChange {
    /// `Namespace`, `Service`, `EndpointSlice`, `AuthorizationPolicy`,
    /// `PeerAuthentication` or `RequestAuthentication`.
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    pub name: String,
    /// None: deleted.
    pub object: Option<Arc<Value>>,
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("feed connection: {0}")]
    Io(#[from] io::Error),
    #[error("feed frame of {0} bytes is over the limit")]
    TooLarge(usize),
    #[error("malformed feed frame: {0}")]
    Malformed(#[from] serde_json::Error),
}

/// A frame ready to write: encoded once, written to every agent.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, WireError> {
    let mut bytes = vec![0; 4];
    serde_json::to_writer(&mut bytes, frame)?;
    let len = bytes.len() - 4;
    if len > MAX_FRAME {
        return Err(WireError::TooLarge(len));
    }
    let prefix = u32::try_from(len).map_err(|_| WireError::TooLarge(len))?;
    bytes[..4].copy_from_slice(&prefix.to_be_bytes());
    Ok(bytes)
}

pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), WireError> {
    writer.write_all(&encode(frame)?).await?;
    Ok(writer.flush().await?)
}

/// The next frame, at most `limit` bytes long (a hello is small, a server's
/// frame up to `MAX_FRAME`); None at a clean end of stream (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: usize,
) -> Result<Option<Frame>, WireError> {
    let mut prefix = [0u8; 4];
    match reader.read_exact(&mut prefix).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(prefix) as usize;
    if len > limit {
        return Err(WireError::TooLarge(len));
    }
    let mut body = vec![0; len];
    reader.read_exact(&mut body).await?;
    Ok(Some(serde_json::from_slice(&body)?))
}
