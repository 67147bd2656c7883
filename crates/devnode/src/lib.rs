//! A self-contained regtest Bitcoin node for development and tests.
//!
//! Blocks are validated by Bitcoin Core's own consensus engine
//! (libbitcoinkernel through the `bitcoinkernel` crate). A tiny built-in
//! wallet mines the first blocks, then keeps signed legacy (P2PKH) and segwit
//! (P2WPKH) transactions in a mempool so block templates look like a real
//! node's. A JSON-RPC server on loopback answers the calls a mining pool makes
//! (`getblocktemplate`, `submitblock`, ...) in Bitcoin Core's exact shape,
//! with user/password and cookie-file authentication.
#![forbid(unsafe_code)]

mod node;
mod rpc;
mod wallet;
mod zmq;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bitcoin::hashes::Hash;
use bitcoin::{Block, BlockHash, ScriptBuf};
use parking_lot::Mutex;

use crate::node::NodeCore;
use crate::rpc::{RpcAuth, RpcServer};

/// Everything that can go wrong starting or driving a [`DevNode`].
#[derive(Debug, thiserror::Error)]
pub enum DevNodeError {
    /// The options cannot be used (for example a non-UTF-8 data directory).
    #[error("invalid devnode options: {0}")]
    InvalidOptions(String),
    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What the node was doing.
        context: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// libbitcoinkernel refused an operation or returned unexpected data.
    #[error("bitcoin kernel: {0}")]
    Kernel(String),
    /// The ZMQ publisher could not bind its endpoint.
    #[error("zmq: {0}")]
    Zmq(String),
    /// The built-in wallet could not derive keys or build a transaction.
    #[error("devnode wallet: {0}")]
    Wallet(String),
    /// A blocking task died (panicked or was cancelled).
    #[error("devnode background task failed: {0}")]
    Task(String),
}

/// How to start a [`DevNode`].
#[derive(Clone, Debug)]
pub struct DevNodeOptions {
    /// Where the chain is stored. `None` uses a temporary directory that is
    /// deleted on shutdown (and keeps the kernel databases in memory).
    pub data_dir: Option<PathBuf>,
    /// Address of the JSON-RPC server; port 0 picks a free port.
    pub rpc_bind: SocketAddr,
    /// RPC user name; `None` means `devnode`.
    pub rpc_user: Option<String>,
    /// RPC password; `None` generates a random one.
    pub rpc_password: Option<String>,
    /// Blocks mined at start (if the chain is lower), so that early coinbases
    /// have matured and the wallet can spend them. Default 110.
    pub initial_blocks: u32,
    /// How many wallet transactions to keep in the mempool. Default 4.
    pub template_transactions: usize,
    /// ZMQ endpoint (e.g. `tcp://127.0.0.1:0`) publishing Bitcoin Core's
    /// `hashblock` topic on every new tip; `None` disables ZMQ.
    pub zmq_pub_hashblock: Option<String>,
}

impl Default for DevNodeOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            rpc_bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            rpc_user: None,
            rpc_password: None,
            initial_blocks: 110,
            template_transactions: 4,
            zmq_pub_hashblock: None,
        }
    }
}

/// Entry point: see [`DevNode::start`].
pub struct DevNode;

impl DevNode {
    /// Opens the chain, mines the initial blocks, fills the mempool, writes
    /// the cookie file and starts the JSON-RPC server.
    pub async fn start(opts: DevNodeOptions) -> Result<DevNodeHandle, DevNodeError> {
        let (data_dir, temp_dir) = match &opts.data_dir {
            Some(dir) => {
                tokio::fs::create_dir_all(dir)
                    .await
                    .map_err(|source| DevNodeError::Io {
                        context: format!("creating data directory {}", dir.display()),
                        source,
                    })?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("tbg-devnode-")
                    .tempdir()
                    .map_err(|source| DevNodeError::Io {
                        context: "creating temporary data directory".to_string(),
                        source,
                    })?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };

        let initial_blocks = opts.initial_blocks;
        let template_transactions = opts.template_transactions;
        let open_dir = data_dir.clone();
        let node = run_blocking(move || {
            let node = NodeCore::open(&open_dir, temp_dir, template_transactions)?;
            node.mine_to_height(initial_blocks)?;
            Ok(node)
        })
        .await?;
        let node = Arc::new(node);

        let zmq = match &opts.zmq_pub_hashblock {
            Some(endpoint) => {
                let (sender, receiver) = tokio::sync::mpsc::channel(zmq::TIP_QUEUE_CAPACITY);
                let publisher = zmq::HashBlockPublisher::start(endpoint, receiver).await?;
                node.set_tip_listener(sender);
                Some(publisher)
            }
            None => None,
        };

        let cookie_secret = random_hex(32);
        let cookie_path = data_dir.join(".cookie");
        write_cookie(&cookie_path, &cookie_secret).await?;

        let rpc_user = opts.rpc_user.unwrap_or_else(|| "devnode".to_string());
        let rpc_password = opts.rpc_password.unwrap_or_else(|| random_hex(16));
        let auth = Arc::new(RpcAuth::new(&rpc_user, &rpc_password, &cookie_secret));
        let server = RpcServer::start(opts.rpc_bind, Arc::clone(&node), Arc::clone(&auth)).await?;
        let rpc_addr = server.local_addr();
        tracing::info!(%rpc_addr, data_dir = %data_dir.display(), "devnode started");

        Ok(DevNodeHandle {
            rpc_url: format!("http://{rpc_addr}"),
            rpc_user,
            rpc_password,
            cookie_path,
            rpc_addr,
            node: Some(node),
            auth,
            server: Mutex::new(Some(server)),
            zmq,
        })
    }
}

/// A running node. Call [`DevNodeHandle::shutdown`] to stop it cleanly;
/// dropping the handle only stops the RPC server.
pub struct DevNodeHandle {
    /// `http://127.0.0.1:PORT` of the JSON-RPC server.
    pub rpc_url: String,
    /// RPC user name for HTTP Basic auth.
    pub rpc_user: String,
    /// RPC password for HTTP Basic auth.
    pub rpc_password: String,
    /// Bitcoin Core style cookie file (`__cookie__:<hex>`), an alternative
    /// to user/password.
    pub cookie_path: PathBuf,
    rpc_addr: SocketAddr,
    // `None` only after shutdown took it.
    node: Option<Arc<NodeCore>>,
    auth: Arc<RpcAuth>,
    server: Mutex<Option<RpcServer>>,
    zmq: Option<zmq::HashBlockPublisher>,
}

impl DevNodeHandle {
    /// URL of the JSON-RPC server (`http://127.0.0.1:PORT`).
    pub fn rpc_url(&self) -> &str {
        &self.rpc_url
    }

    /// RPC user name.
    pub fn rpc_user(&self) -> &str {
        &self.rpc_user
    }

    /// RPC password.
    pub fn rpc_password(&self) -> &str {
        &self.rpc_password
    }

    /// Path of the cookie file.
    pub fn cookie_path(&self) -> &Path {
        &self.cookie_path
    }

    /// Socket address the RPC server is (or was last) bound to.
    pub fn rpc_addr(&self) -> SocketAddr {
        self.rpc_addr
    }

    /// The bound ZMQ `hashblock` endpoint (real port), if enabled.
    pub fn zmq_hashblock_endpoint(&self) -> Option<&str> {
        self.zmq.as_ref().map(zmq::HashBlockPublisher::endpoint)
    }

    fn node(&self) -> Option<&Arc<NodeCore>> {
        self.node.as_ref()
    }

    /// Height of the active chain tip (0 if the node is shut down).
    pub fn block_count(&self) -> u32 {
        self.node()
            .and_then(|node| node.tip().ok())
            .map_or(0, |tip| tip.height)
    }

    /// Hash of the active chain tip (all zeros only if the kernel cannot
    /// report its tip, which a running node never does).
    pub fn best_block_hash(&self) -> BlockHash {
        self.node()
            .and_then(|node| node.tip().ok())
            .map_or(BlockHash::all_zeros(), |tip| tip.hash)
    }

    /// Reads a stored block (on the active chain or not). Blocks the calling
    /// thread on a short disk read.
    pub fn get_block(&self, hash: &BlockHash) -> Option<Block> {
        self.node()?
            .stored_block(hash)
            .ok()
            .flatten()
            .map(|stored| stored.block)
    }

    /// Mines `count` blocks paying `script_pubkey` (like another miner
    /// finding blocks); they include the mempool's transactions.
    pub async fn mine_blocks(
        &self,
        count: u32,
        script_pubkey: &ScriptBuf,
    ) -> Result<Vec<BlockHash>, DevNodeError> {
        let node = self.running_node()?;
        let script_pubkey = script_pubkey.clone();
        run_blocking(move || node.mine_blocks(count, &script_pubkey)).await
    }

    /// The wallet's P2PKH and P2WPKH addresses (regtest).
    pub fn wallet_addresses(&self) -> Option<(bitcoin::Address, bitcoin::Address)> {
        self.node().map(|node| node.wallet_addresses())
    }

    /// Closes the RPC listener and its connections (simulates the node being
    /// unreachable). The chain keeps its state.
    pub async fn stop_rpc(&self) {
        let server = self.server.lock().take();
        if let Some(server) = server {
            server.stop().await;
        }
    }

    /// Re-binds the RPC server on the same address it had before.
    pub async fn start_rpc(&self) -> Result<(), DevNodeError> {
        if self.server.lock().is_some() {
            return Ok(());
        }
        let node = self.running_node()?;
        let server = RpcServer::start(self.rpc_addr, node, Arc::clone(&self.auth)).await?;
        *self.server.lock() = Some(server);
        Ok(())
    }

    /// Stops the RPC server, removes the cookie file, shuts the kernel down
    /// (flushing the chainstate) and deletes a temporary data directory.
    pub async fn shutdown(mut self) {
        self.stop_rpc().await;
        let _ = tokio::fs::remove_file(&self.cookie_path).await;
        if let Some(node) = self.node.take() {
            // The kernel flushes to disk when dropped: keep it off the runtime.
            let _ = tokio::task::spawn_blocking(move || drop(node)).await;
        }
    }

    fn running_node(&self) -> Result<Arc<NodeCore>, DevNodeError> {
        self.node
            .clone()
            .ok_or_else(|| DevNodeError::Task("devnode is shut down".to_string()))
    }
}

impl Drop for DevNodeHandle {
    fn drop(&mut self) {
        if let Some(server) = self.server.lock().take() {
            server.cancel();
        }
        if let Some(zmq) = &self.zmq {
            zmq.stop();
        }
    }
}

/// Runs blocking node work off the async runtime.
async fn run_blocking<T, F>(work: F) -> Result<T, DevNodeError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, DevNodeError> + Send + 'static,
{
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|error| DevNodeError::Task(error.to_string()))?
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buffer = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buffer);
    hex::encode(buffer)
}

async fn write_cookie(path: &Path, secret: &str) -> Result<(), DevNodeError> {
    tokio::fs::write(path, format!("__cookie__:{secret}"))
        .await
        .map_err(|source| DevNodeError::Io {
            context: format!("writing cookie file {}", path.display()),
            source,
        })?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|source| DevNodeError::Io {
                context: format!("restricting cookie file {}", path.display()),
                source,
            })?;
    }
    Ok(())
}
