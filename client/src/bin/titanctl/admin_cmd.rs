//! `status`, `members`, `transfer-leader`, `snapshot`.

use crate::output::{Table, print_json};
use crate::{Exit, Format};
use serde::Serialize;
use serde_json::json;
use titan_client::proto::{self as pb, Role};
use titan_client::{AdminClient, Error};

#[derive(Debug, clap::Subcommand)]
pub enum MembersAction {
    /// List members as the leader (or any reachable node) sees them.
    List,
    /// Add a node (started with --join) as a non-voting learner.
    Add(AddArgs),
    /// Promote a learner to voter.
    Promote {
        /// Member id.
        id: u64,
    },
    /// Remove a member (voter or learner).
    Remove {
        /// Member id.
        id: u64,
    },
}

/// `titanctl members add`
#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The new node's id, as shown by its own `status`.
    #[arg(long)]
    id: u64,
    /// The new node's name.
    #[arg(long)]
    name: String,
    /// Its peer (Raft + Admin) address, host:port.
    #[arg(long)]
    peer_addr: String,
    /// Its plaintext TCP client address, host:port.
    #[arg(long, default_value = "")]
    client_addr: String,
    /// Its client gRPC address, host:port.
    #[arg(long, default_value = "")]
    grpc_addr: String,
}

/// `titanctl transfer-leader`
#[derive(Debug, clap::Args)]
pub struct TransferArgs {
    /// Target member id (default: the leader picks the most up-to-date voter).
    #[arg(long, default_value_t = 0)]
    to: u64,
}

/// `titanctl snapshot`, `titanctl merge-value-log`
#[derive(Debug, clap::Args)]
pub struct SnapshotArgs {
    /// Admin address of the node (default: the first endpoint).
    #[arg(long)]
    node: Option<String>,
}

/// One line of the status table.
#[derive(Debug, Serialize)]
struct NodeRow {
    node: String,
    id: u64,
    admin_addr: String,
    reachable: bool,
    role: String,
    voter: bool,
    term: u64,
    commit: u64,
    applied: u64,
    /// Entries behind the leader, as the leader sees it.
    lag: u64,
    last_snapshot_index: u64,
    last_snapshot_unix_ms: u64,
    error: Option<String>,
}

pub async fn status(admin: &AdminClient, fmt: Format) -> Result<Exit, Error> {
    let (_, first) = admin.status_any().await?;
    // The leader's view has the lag of every member; fall back to ours.
    let view = match first.leader_peer_addr.as_str() {
        "" => first,
        leader => admin.status_of(leader).await.unwrap_or(first),
    };
    let mut rows = Vec::with_capacity(view.members.len());
    for member in &view.members {
        rows.push(node_row(admin, member).await);
    }
    let unreachable = rows.iter().filter(|r| !r.reachable).count();
    match fmt {
        Format::Json => print_json(&json!({
            "leader_id": view.leader_id,
            "leader_grpc_addr": view.leader_grpc_addr,
            "cluster_id": view.cluster_id,
            "members": rows,
        })),
        Format::Table => print_status_table(&view, &rows),
    }
    Ok(if unreachable > 0 {
        Exit::Partial
    } else {
        Exit::Ok
    })
}

async fn node_row(admin: &AdminClient, member: &pb::Member) -> NodeRow {
    let mut row = NodeRow {
        node: member.name.clone(),
        id: member.id,
        admin_addr: member.peer_addr.clone(),
        reachable: false,
        role: "unreachable".into(),
        voter: member.voter,
        term: 0,
        commit: 0,
        applied: 0,
        lag: member.lag_entries,
        last_snapshot_index: 0,
        last_snapshot_unix_ms: 0,
        error: None,
    };
    match admin.status_of(&member.peer_addr).await {
        Ok(s) => {
            row.reachable = true;
            row.role = role_name(s.role());
            row.term = s.term;
            row.commit = s.commit_index;
            row.applied = s.applied_index;
            if let Some(snap) = s.last_snapshot {
                row.last_snapshot_index = snap.index;
                row.last_snapshot_unix_ms = snap.unix_ms;
            }
        }
        Err(err) => row.error = Some(err.to_string()),
    }
    row
}

fn print_status_table(view: &pb::StatusResponse, rows: &[NodeRow]) {
    let mut table = Table::new([
        "NODE",
        "ID",
        "ADDR",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "LAST SNAPSHOT",
    ]);
    let now_ms = unix_ms_now();
    for r in rows {
        let snapshot = match r.last_snapshot_index {
            0 => "-".to_string(),
            idx => format!("{idx} ({} ago)", ago(now_ms, r.last_snapshot_unix_ms)),
        };
        let role = if r.voter {
            r.role.clone()
        } else {
            format!("{} (learner)", r.role)
        };
        table.row([
            r.node.clone(),
            r.id.to_string(),
            r.admin_addr.clone(),
            role,
            r.term.to_string(),
            r.commit.to_string(),
            r.applied.to_string(),
            r.lag.to_string(),
            snapshot,
        ]);
    }
    table.print();
    match view.leader_id {
        0 => println!("leader: none known"),
        id => println!(
            "leader: {id} (gRPC {}, TCP {})",
            view.leader_grpc_addr, view.leader_client_addr
        ),
    }
    for r in rows.iter().filter(|r| !r.reachable) {
        eprintln!(
            "{}: {}",
            r.node,
            r.error.as_deref().unwrap_or("unreachable")
        );
    }
}

pub async fn members(
    admin: &AdminClient,
    action: &MembersAction,
    fmt: Format,
) -> Result<Exit, Error> {
    let (members, index) = match action {
        MembersAction::List => {
            let status = match admin.leader_endpoint().await {
                Ok(leader) => admin.status_of(&leader).await?,
                Err(_) => admin.status_any().await?.1,
            };
            (status.members, None)
        }
        MembersAction::Add(a) => {
            let req = pb::AddMemberRequest {
                id: a.id,
                name: a.name.clone(),
                peer_addr: a.peer_addr.clone(),
                client_addr: a.client_addr.clone(),
                grpc_addr: a.grpc_addr.clone(),
            };
            let resp = admin.add_member(req).await?;
            (resp.members, Some(resp.index))
        }
        MembersAction::Promote { id } => {
            let resp = admin.promote_member(*id).await?;
            (resp.members, Some(resp.index))
        }
        MembersAction::Remove { id } => {
            let resp = admin.remove_member(*id).await?;
            (resp.members, Some(resp.index))
        }
    };
    print_members(&members, index, fmt);
    Ok(Exit::Ok)
}

fn print_members(members: &[pb::Member], index: Option<u64>, fmt: Format) {
    if fmt == Format::Json {
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                json!({"id": m.id, "name": m.name, "peer_addr": m.peer_addr,
                       "client_addr": m.client_addr, "grpc_addr": m.grpc_addr,
                       "voter": m.voter, "match_index": m.match_index, "lag": m.lag_entries})
            })
            .collect();
        print_json(&json!({"members": list, "config_index": index}));
        return;
    }
    let mut table = Table::new([
        "ID", "NAME", "PEER", "CLIENT", "GRPC", "VOTER", "MATCH", "LAG",
    ]);
    for m in members {
        table.row([
            m.id.to_string(),
            m.name.clone(),
            m.peer_addr.clone(),
            m.client_addr.clone(),
            m.grpc_addr.clone(),
            m.voter.to_string(),
            m.match_index.to_string(),
            m.lag_entries.to_string(),
        ]);
    }
    table.print();
    if let Some(index) = index {
        println!("configuration committed at index {index}");
    }
}

pub async fn transfer(
    admin: &AdminClient,
    args: &TransferArgs,
    fmt: Format,
) -> Result<Exit, Error> {
    let resp = admin.transfer_leadership(args.to).await?;
    match fmt {
        Format::Json => print_json(&json!({"leader_id": resp.leader_id})),
        Format::Table => println!("leader is now {}", resp.leader_id),
    }
    Ok(Exit::Ok)
}

fn node_of(admin: &AdminClient, args: &SnapshotArgs) -> Result<String, Error> {
    match &args.node {
        Some(node) => Ok(node.clone()),
        None => admin.endpoints().first().cloned().ok_or(Error::NoEndpoints),
    }
}

pub async fn merge_value_log(
    admin: &AdminClient,
    args: &SnapshotArgs,
    fmt: Format,
) -> Result<Exit, Error> {
    let node = node_of(admin, args)?;
    let m = admin.merge_value_log(&node).await?;
    match fmt {
        Format::Json => print_json(&json!({
            "node": node, "files": m.files, "file_bytes": m.file_bytes,
            "live_bytes": m.live_bytes
        })),
        Format::Table => println!(
            "value log on {node}: merged {} files ({} bytes, {} live bytes copied)",
            m.files, m.file_bytes, m.live_bytes
        ),
    }
    Ok(Exit::Ok)
}

pub async fn snapshot(
    admin: &AdminClient,
    args: &SnapshotArgs,
    fmt: Format,
) -> Result<Exit, Error> {
    let node = node_of(admin, args)?;
    let snap = admin
        .take_snapshot(&node)
        .await?
        .snapshot
        .unwrap_or_default();
    match fmt {
        Format::Json => print_json(&json!({
            "node": node, "index": snap.index, "term": snap.term,
            "unix_ms": snap.unix_ms, "size_bytes": snap.size_bytes
        })),
        Format::Table => println!(
            "snapshot on {node}: index {} term {} ({} bytes)",
            snap.index, snap.term, snap.size_bytes
        ),
    }
    Ok(Exit::Ok)
}

fn role_name(role: Role) -> String {
    match role {
        Role::Unspecified => "unknown",
        Role::Follower => "follower",
        Role::Candidate => "candidate",
        Role::PreCandidate => "pre-candidate",
        Role::Leader => "LEADER",
        Role::Learner => "learner",
        Role::Joining => "joining",
    }
    .to_string()
}

fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// "12s", "5m", "3h": coarse age of a timestamp.
fn ago(now_ms: u64, then_ms: u64) -> String {
    let secs = now_ms.saturating_sub(then_ms) / 1000;
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s => format!("{}h", s / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::ago;

    #[test]
    fn snapshot_age_is_coarse_and_never_negative() {
        assert_eq!(ago(10_000, 5_000), "5s");
        assert_eq!(ago(5_000, 10_000), "0s");
        assert_eq!(ago(600_000, 0), "10m");
        assert_eq!(ago(36_000_000, 0), "10h");
    }
}
