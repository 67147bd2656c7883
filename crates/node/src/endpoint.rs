//! Where a node is and how to authenticate to it.

use std::fmt;
use std::path::PathBuf;

/// One Bitcoin Core RPC endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeEndpoint {
    /// `http://host:port` or ckpool's bare `host:port` (http is assumed).
    pub url: String,
    pub auth: NodeAuth,
}

/// RPC credentials.
#[derive(Clone, PartialEq, Eq)]
pub enum NodeAuth {
    /// `rpcuser` / `rpcpassword` (or an `rpcauth` pair).
    UserPass { user: String, pass: String },
    /// Path of Core's `.cookie` file (`__cookie__:<hex>`). Core rewrites it on
    /// every restart, so the client re-reads it when the node refuses it.
    Cookie(PathBuf),
}

impl fmt::Debug for NodeAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeAuth::UserPass { user, .. } => f
                .debug_struct("UserPass")
                .field("user", user)
                .field("pass", &"<redacted>")
                .finish(),
            NodeAuth::Cookie(path) => f.debug_tuple("Cookie").field(path).finish(),
        }
    }
}

impl NodeEndpoint {
    /// The URL requests go to: a scheme is added when the config gave only
    /// `host:port`, as ckpool's `btcd.url` does.
    pub fn request_url(&self) -> String {
        if self.url.contains("://") {
            self.url.clone()
        } else {
            format!("http://{}", self.url)
        }
    }
}
