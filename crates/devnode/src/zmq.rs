//! Bitcoin Core style ZMQ `hashblock` publisher.

use bitcoin::hashes::Hash;
use bitcoin::BlockHash;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use zeromq::{Socket, SocketSend, ZmqMessage};

use crate::DevNodeError;

/// Tip changes waiting to be published. When full the node drops the newest
/// notification (ZMQ delivery is best-effort in Bitcoin Core too).
pub(crate) const TIP_QUEUE_CAPACITY: usize = 256;

/// A bound PUB socket publishing every new tip.
pub(crate) struct HashBlockPublisher {
    endpoint: String,
    task: JoinHandle<()>,
}

impl HashBlockPublisher {
    /// Binds `endpoint` (e.g. `tcp://127.0.0.1:0`) and publishes each hash
    /// received on `tips` as `["hashblock", <32-byte hash>, <u32 LE sequence>]`.
    pub(crate) async fn start(
        endpoint: &str,
        mut tips: mpsc::Receiver<BlockHash>,
    ) -> Result<Self, DevNodeError> {
        let mut socket = zeromq::PubSocket::new();
        let bound = socket
            .bind(endpoint)
            .await
            .map_err(|error| DevNodeError::Zmq(format!("binding {endpoint}: {error}")))?;
        let task = tokio::spawn(async move {
            let mut sequence: u32 = 0;
            while let Some(hash) = tips.recv().await {
                // Core sends the hash in display (reversed) byte order.
                let mut hash_bytes = hash.to_byte_array();
                hash_bytes.reverse();
                let mut message = ZmqMessage::from("hashblock");
                message.push_back(hash_bytes.to_vec().into());
                message.push_back(sequence.to_le_bytes().to_vec().into());
                if let Err(error) = socket.send(message).await {
                    tracing::warn!(%error, "zmq hashblock publish failed");
                }
                sequence = sequence.wrapping_add(1);
            }
        });
        Ok(Self {
            endpoint: bound.to_string(),
            task,
        })
    }

    /// The bound endpoint with the real port.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn stop(&self) {
        self.task.abort();
    }
}
