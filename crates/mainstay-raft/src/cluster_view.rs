//! The cluster as one member sees it, and how another member asks for it
//! (a joining member, a member started with `--force-new-cluster`). A leaf:
//! the peer client and the codec only.

use serde::{Deserialize, Serialize};

use crate::type_config::MemberNode;

/// The cluster as one member sees it: what a joining member asks for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// The cluster id.
    pub cluster_id: u64,
    /// Every member: id, description, whether a learner.
    pub members: Vec<(u64, MemberNode, bool)>,
    /// Log index of the membership these members come from (0 if none).
    pub membership_index: u64,
    /// Whether that membership is applied here, so committed (an effective
    /// membership may still be undone by a new leader).
    pub settled: bool,
}

/// Asks the member at `peer_url` for its view of the cluster.
pub async fn fetch_cluster_view(
    dial: &crate::peer_channel::Dial,
    peer_url: &str,
) -> Result<ClusterView, String> {
    let channel = dial(peer_url)?;
    let mut client = mainstay_proto::peer::raft_peer_client::RaftPeerClient::new(channel);
    let reply = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        client.members(mainstay_proto::peer::MembersRequest {}),
    )
    .await
    .map_err(|_| format!("{peer_url}: timed out"))?
    .map_err(|status| format!("{peer_url}: {}", status.message()))?;
    crate::codec::decode_message(&reply.into_inner().view).map_err(|e| format!("{peer_url}: {e}"))
}
