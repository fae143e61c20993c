//! Majority arithmetic, kept pure so it can be tested from tables.
//!
//! Titan uses single-server membership changes, so every decision is taken by
//! a simple majority of one voter set (no joint quorums).

use std::collections::{BTreeMap, BTreeSet};

use super::NodeId;

/// Outcome of counting votes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VoteResult {
    /// A majority granted.
    Won,
    /// A majority can no longer be reached.
    Lost,
    /// Neither yet.
    Pending,
}

/// Votes needed out of `voters` for a majority. `0` voters need `1` vote
/// (which can never be cast), so an empty configuration never decides.
pub fn majority(voters: usize) -> usize {
    voters / 2 + 1
}

/// The largest index that a majority of `voters` has matched; `0` when there
/// are no voters. Peers missing from `matched` count as `0`.
pub fn committed_index(voters: &BTreeSet<NodeId>, matched: impl Fn(NodeId) -> u64) -> u64 {
    if voters.is_empty() {
        return 0;
    }
    let mut indexes: Vec<u64> = voters.iter().map(|&id| matched(id)).collect();
    indexes.sort_unstable_by(|a, b| b.cmp(a));
    indexes[majority(indexes.len()) - 1]
}

/// Counts `votes` (granted or rejected), ignoring non-voters.
pub fn vote_result(voters: &BTreeSet<NodeId>, votes: &BTreeMap<NodeId, bool>) -> VoteResult {
    let need = majority(voters.len());
    let granted = voters
        .iter()
        .filter(|id| votes.get(id) == Some(&true))
        .count();
    let rejected = voters
        .iter()
        .filter(|id| votes.get(id) == Some(&false))
        .count();
    if granted >= need {
        VoteResult::Won
    } else if voters.len() - rejected < need {
        VoteResult::Lost
    } else {
        VoteResult::Pending
    }
}

/// Whether the voters for which `acked` holds form a majority.
pub fn has_quorum(voters: &BTreeSet<NodeId>, acked: impl Fn(NodeId) -> bool) -> bool {
    !voters.is_empty() && voters.iter().filter(|&&id| acked(id)).count() >= majority(voters.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn majority_table() {
        for (n, want) in [
            (0, 1),
            (1, 1),
            (2, 2),
            (3, 2),
            (4, 3),
            (5, 3),
            (6, 4),
            (7, 4),
        ] {
            assert_eq!(majority(n), want, "voters={n}");
        }
    }

    #[test]
    fn committed_index_is_the_majority_matched_index_table() {
        let cases: &[(&[NodeId], &[u64], u64)] = &[
            (&[], &[], 0),
            (&[1], &[5], 5),
            (&[1, 2], &[5, 3], 3),
            (&[1, 2, 3], &[5, 3, 1], 3),
            (&[1, 2, 3], &[5, 0, 0], 0),
            (&[1, 2, 3], &[2, 2, 9], 2),
            (&[1, 2, 3, 4], &[9, 8, 7, 1], 7),
            (&[1, 2, 3, 4, 5], &[9, 8, 7, 1, 0], 7),
            (&[1, 2, 3, 4, 5], &[9, 8, 1, 1, 0], 1),
        ];
        for (voters, matched, want) in cases {
            let voters = set(voters);
            let by_id: BTreeMap<NodeId, u64> = voters
                .iter()
                .copied()
                .zip(matched.iter().copied())
                .collect();
            let got = committed_index(&voters, |id| by_id.get(&id).copied().unwrap_or(0));
            assert_eq!(got, *want, "voters={voters:?} matched={matched:?}");
        }
    }

    /// `(voters, votes cast, expected result)`.
    type VoteCase<'a> = (&'a [NodeId], &'a [(NodeId, bool)], VoteResult);

    #[test]
    fn vote_result_table() {
        use VoteResult::*;
        let cases: &[VoteCase] = &[
            (&[1], &[(1, true)], Won),
            (&[1, 2, 3], &[(1, true)], Pending),
            (&[1, 2, 3], &[(1, true), (2, true)], Won),
            (&[1, 2, 3], &[(1, true), (2, false)], Pending),
            (&[1, 2, 3], &[(1, true), (2, false), (3, false)], Lost),
            (&[1, 2, 3, 4], &[(1, true), (2, true)], Pending),
            (&[1, 2, 3, 4], &[(1, true), (2, false), (3, false)], Lost),
            // A non-voter's grant does not count.
            (&[1, 2, 3], &[(1, true), (9, true)], Pending),
        ];
        for (voters, votes, want) in cases {
            let votes: BTreeMap<NodeId, bool> = votes.iter().copied().collect();
            assert_eq!(
                vote_result(&set(voters), &votes),
                *want,
                "{voters:?} {votes:?}"
            );
        }
    }

    #[test]
    fn has_quorum_table() {
        let cases: &[(&[NodeId], &[NodeId], bool)] = &[
            (&[], &[], false),
            (&[1], &[1], true),
            (&[1, 2, 3], &[1], false),
            (&[1, 2, 3], &[1, 3], true),
            (&[1, 2, 3, 4], &[1, 3], false),
            (&[1, 2, 3, 4], &[1, 3, 4, 7], true),
        ];
        for (voters, acked, want) in cases {
            let acked = set(acked);
            assert_eq!(has_quorum(&set(voters), |id| acked.contains(&id)), *want);
        }
    }
}
