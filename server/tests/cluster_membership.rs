//! Membership changes through the Admin API while clients write: grow
//! 3 → 5 (learners, then promotion), transfer leadership, shrink 5 → 3
//! including removing the current leader.
// Scenarios read top to bottom; the workspace's 70-line limit is for code.
#![allow(clippy::too_many_lines)]

mod common;

use std::time::Duration;

use common::load::{Writers, verify_all};
use common::{Cluster, Node, base_args, rt, wait_for};
use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient;

fn admin(port: u16) -> AdminClient<tonic::transport::Channel> {
    rt().block_on(AdminClient::connect(format!("http://127.0.0.1:{port}")))
        .expect("admin connect")
}

fn leader_port(cluster: &Cluster) -> u16 {
    cluster.nodes[cluster.wait_leader(Duration::from_secs(10))].peer_port
}

/// Runs an admin call on whoever leads, retrying through elections.
fn on_leader<T>(
    cluster: &Cluster,
    what: &str,
    f: impl Fn(AdminClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
) -> Option<T> {
    wait_for(Duration::from_secs(20), what, || {
        match f(admin(leader_port(cluster))) {
            Ok(v) => Some(Some(v)),
            // A retried removal whose first attempt committed (its reply was
            // lost when the leader stepped down) finds the member gone.
            Err(e) if e.message().contains("is not a member") => Some(None),
            Err(e) => {
                eprintln!("{what}: {e}");
                None
            }
        }
    })
}

fn wait_writes(writers: &Writers, more: u64) {
    let before = writers.acked();
    wait_for(Duration::from_secs(15), "writes keep succeeding", || {
        (writers.acked() >= before + more).then_some(())
    });
}

#[test]
fn grow_to_five_transfer_leadership_and_shrink_to_three_while_writing() {
    let mut cluster = Cluster::start(3, &[]);
    // Two joiners start empty and wait to be added.
    for name in ["node4", "node5"] {
        let mut n = Node::new(cluster.root.path(), name);
        n.args = base_args();
        n.args
            .push(format!("--advertise-peer-addr=127.0.0.1:{}", n.peer_port));
        n.args.push("--join".into());
        n.start();
        cluster.nodes.push(n);
    }
    let ports = cluster.client_ports();
    let writers = Writers::start(ports, 2, 20);
    wait_writes(&writers, 10);
    for i in 3..5 {
        let st = wait_for(Duration::from_secs(10), "joiner status", || {
            cluster.nodes[i].status()
        });
        assert_eq!(st.role, pb::Role::Joining as i32);
        let n = &cluster.nodes[i];
        let req = pb::AddMemberRequest {
            id: st.id,
            name: n.name.clone(),
            peer_addr: format!("127.0.0.1:{}", n.peer_port),
            client_addr: format!("127.0.0.1:{}", n.client_port),
            grpc_addr: format!("127.0.0.1:{}", n.grpc_port),
        };
        on_leader(&cluster, "add learner", |mut a| {
            rt().block_on(a.add_member(req.clone()))
        });
        wait_for(Duration::from_secs(20), "learner catches up", || {
            cluster.nodes[i]
                .status()
                .filter(|s| s.role == pb::Role::Learner as i32 && s.applied_index > 0)
        });
        on_leader(&cluster, "promote", |mut a| {
            rt().block_on(a.promote_member(pb::PromoteMemberRequest { id: st.id }))
        });
        wait_writes(&writers, 10);
    }
    let status = cluster.nodes[cluster.wait_leader(Duration::from_secs(5))]
        .status()
        .expect("status");
    assert_eq!(status.members.iter().filter(|m| m.voter).count(), 5);
    // Transfer leadership to node5.
    let node5 = cluster.nodes[4].status().expect("node5").id;
    on_leader(&cluster, "transfer", |mut a| {
        rt().block_on(a.transfer_leadership(pb::TransferLeadershipRequest { target_id: node5 }))
    });
    wait_for(Duration::from_secs(10), "node5 leads", || {
        (cluster.current_leader() == Some(4)).then_some(())
    });
    wait_writes(&writers, 10);
    // Shrink: remove node1, then the current leader (node5).
    let node1 = cluster.nodes[0].status().expect("node1").id;
    on_leader(&cluster, "remove node1", |mut a| {
        rt().block_on(a.remove_member(pb::RemoveMemberRequest { id: node1 }))
    });
    wait_writes(&writers, 10);
    on_leader(&cluster, "remove leader", |mut a| {
        rt().block_on(a.remove_member(pb::RemoveMemberRequest { id: node5 }))
    });
    wait_for(Duration::from_secs(10), "a remaining member leads", || {
        cluster.current_leader().filter(|&l| l != 0 && l != 4)
    });
    wait_writes(&writers, 10);
    let ledger = writers.stop();
    let leader = cluster.wait_leader(Duration::from_secs(5));
    let status = cluster.nodes[leader].status().expect("status");
    assert_eq!(
        status.members.iter().filter(|m| m.voter).count(),
        3,
        "{status:?}"
    );
    cluster.nodes[0].kill();
    cluster.nodes[4].kill();
    verify_all(&cluster, &ledger);
}
