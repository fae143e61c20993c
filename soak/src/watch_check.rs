//! Watch streams checked against the committed history: a watcher that
//! started at revision `from` and was read through revision `through` must
//! have seen exactly the committed events in `from..=through` on its keys,
//! each once, in revision order (events of one revision in commit order),
//! with the committed values. A stream that broke and was resumed from
//! `last_seen + 1` (as clients do) is checked as one stream: the resume must
//! neither lose nor repeat an event.
//!
//! The committed history is the server's own (for example a watch from the
//! first revision opened after the run, before any compaction); every
//! acknowledged write must appear in it at the revision its answer carried
//! ([`check_acked`]), so the history cannot quietly drop an acked write.

/// One event: a put of `value`, or a delete (`value: None`), at `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent<K, V> {
    /// The revision that made the change (the event kv's `mod_revision`).
    pub revision: i64,
    /// The key changed.
    pub key: K,
    /// The value put, or `None` for a delete.
    pub value: Option<V>,
}

/// How a stream (or the history) disagrees with the committed history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchViolation<K, V> {
    /// An event came before one of a lower revision already seen.
    OutOfOrder {
        /// The revision seen earlier.
        previous: i64,
        /// The lower revision that followed it.
        next: i64,
    },
    /// The same event (revision and key) arrived twice.
    Duplicate {
        /// The repeated event.
        event: WatchEvent<K, V>,
    },
    /// An event no committed write made.
    Phantom {
        /// The event that was seen.
        event: WatchEvent<K, V>,
    },
    /// A committed event the stream never delivered.
    Missing {
        /// The committed event.
        event: WatchEvent<K, V>,
    },
    /// A stream over single-write revisions did not hold `expected` next.
    RevisionGap {
        /// The revision owed next.
        expected: i64,
        /// The revision that came instead (`None`: the stream ended).
        seen: Option<i64>,
    },
    /// The event at a revision and key carried another value.
    Mismatch {
        /// What was committed.
        committed: WatchEvent<K, V>,
        /// What the stream said.
        seen: WatchEvent<K, V>,
    },
}

/// Checks one watcher's stream against `committed` (every committed event
/// on the watched keys, in commit order) over the window `from..=through`.
pub fn check_stream<K, V>(
    committed: &[WatchEvent<K, V>],
    from: i64,
    through: i64,
    seen: &[WatchEvent<K, V>],
) -> Result<(), WatchViolation<K, V>>
where
    K: Clone + PartialEq,
    V: Clone + PartialEq,
{
    check_order(seen)?;
    let window: Vec<&WatchEvent<K, V>> = committed
        .iter()
        .filter(|e| e.revision >= from && e.revision <= through)
        .collect();
    let mut want = window.iter();
    for s in seen {
        let Some(w) = want.next() else {
            return Err(WatchViolation::Phantom { event: s.clone() });
        };
        if (w.revision, &w.key) == (s.revision, &s.key) {
            if w.value != s.value {
                return Err(WatchViolation::Mismatch {
                    committed: (*w).clone(),
                    seen: s.clone(),
                });
            }
        } else if window
            .iter()
            .any(|c| (c.revision, &c.key) == (s.revision, &s.key))
        {
            // `s` is committed but came late: `w` was skipped.
            return Err(WatchViolation::Missing {
                event: (*w).clone(),
            });
        } else {
            return Err(WatchViolation::Phantom { event: s.clone() });
        }
    }
    match want.next() {
        Some(w) => Err(WatchViolation::Missing {
            event: (*w).clone(),
        }),
        None => Ok(()),
    }
}

/// Revisions never go back, and no (revision, key) repeats.
fn check_order<K, V>(seen: &[WatchEvent<K, V>]) -> Result<(), WatchViolation<K, V>>
where
    K: Clone + PartialEq,
    V: Clone + PartialEq,
{
    for (i, pair) in seen.windows(2).enumerate() {
        let (a, b) = (&pair[0], &pair[1]);
        if b.revision < a.revision {
            return Err(WatchViolation::OutOfOrder {
                previous: a.revision,
                next: b.revision,
            });
        }
        let mut same_revision = seen[..=i]
            .iter()
            .rev()
            .take_while(|e| e.revision == b.revision);
        if same_revision.any(|e| e.key == b.key) {
            return Err(WatchViolation::Duplicate { event: b.clone() });
        }
    }
    Ok(())
}

/// For a history where every revision is one write on a watched key (the
/// soak's single-key puts): the stream holds each revision of
/// `from..=through` exactly once, in order, and nothing else.
pub fn check_every_revision<K, V>(
    seen: &[WatchEvent<K, V>],
    from: i64,
    through: i64,
) -> Result<(), WatchViolation<K, V>>
where
    K: Clone,
    V: Clone,
{
    let mut expected = from;
    for e in seen {
        if e.revision != expected || expected > through {
            return Err(WatchViolation::RevisionGap {
                expected,
                seen: Some(e.revision),
            });
        }
        expected += 1;
    }
    if expected <= through {
        return Err(WatchViolation::RevisionGap {
            expected,
            seen: None,
        });
    }
    Ok(())
}

/// Every acknowledged write is in the committed history at the revision
/// its answer carried, with its value.
pub fn check_acked<K, V>(
    committed: &[WatchEvent<K, V>],
    acked: &[WatchEvent<K, V>],
) -> Result<(), WatchViolation<K, V>>
where
    K: Clone + PartialEq,
    V: Clone + PartialEq,
{
    for a in acked {
        match committed
            .iter()
            .find(|c| (c.revision, &c.key) == (a.revision, &a.key))
        {
            None => return Err(WatchViolation::Missing { event: a.clone() }),
            Some(c) if c.value != a.value => {
                return Err(WatchViolation::Mismatch {
                    committed: c.clone(),
                    seen: a.clone(),
                });
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    type E = WatchEvent<&'static str, u32>;

    fn put(revision: i64, key: &'static str, value: u32) -> E {
        WatchEvent {
            revision,
            key,
            value: Some(value),
        }
    }

    fn del(revision: i64, key: &'static str) -> E {
        WatchEvent {
            revision,
            key,
            value: None,
        }
    }

    /// Revisions 2..=6; revision 5 is one txn that wrote two keys.
    fn committed() -> Vec<E> {
        vec![
            put(2, "a", 1),
            put(3, "b", 2),
            del(4, "a"),
            put(5, "a", 3),
            put(5, "c", 4),
            put(6, "b", 5),
        ]
    }

    #[test]
    fn a_stream_that_saw_every_committed_event_once_in_order_agrees() {
        let c = committed();
        assert_eq!(check_stream(&c, 2, 6, &c), Ok(()));
        // A watcher from a later revision, read through an earlier one.
        assert_eq!(check_stream(&c, 3, 5, &c[1..5]), Ok(()));
        // Nothing committed in the window, nothing seen.
        assert_eq!(check_stream(&c, 7, 9, &[]), Ok(()));
    }

    #[test]
    fn each_way_a_stream_can_disagree_is_named() {
        let c = committed();
        let table: Vec<(&str, Vec<E>, WatchViolation<&str, u32>)> = vec![
            (
                "a revision lost in a resume",
                vec![
                    c[0].clone(),
                    c[2].clone(),
                    c[3].clone(),
                    c[4].clone(),
                    c[5].clone(),
                ],
                WatchViolation::Missing {
                    event: c[1].clone(),
                },
            ),
            (
                "a resume that repeated the last event",
                vec![c[0].clone(), c[1].clone(), c[1].clone(), c[2].clone()],
                WatchViolation::Duplicate {
                    event: c[1].clone(),
                },
            ),
            (
                "revisions going back",
                vec![c[1].clone(), c[0].clone()],
                WatchViolation::OutOfOrder {
                    previous: 3,
                    next: 2,
                },
            ),
            (
                "an event nobody committed",
                vec![c[0].clone(), put(3, "z", 9)],
                WatchViolation::Phantom {
                    event: put(3, "z", 9),
                },
            ),
            (
                "a stale value",
                vec![c[0].clone(), put(3, "b", 7)],
                WatchViolation::Mismatch {
                    committed: c[1].clone(),
                    seen: put(3, "b", 7),
                },
            ),
            (
                "the stream stopped early",
                c[..5].to_vec(),
                WatchViolation::Missing {
                    event: c[5].clone(),
                },
            ),
            (
                "half of a txn's events",
                vec![
                    c[0].clone(),
                    c[1].clone(),
                    c[2].clone(),
                    c[4].clone(),
                    c[5].clone(),
                ],
                WatchViolation::Missing {
                    event: c[3].clone(),
                },
            ),
        ];
        for (what, seen, want) in table {
            assert_eq!(check_stream(&c, 2, 6, &seen), Err(want), "{what}");
        }
    }

    #[test]
    fn a_single_write_history_owes_every_revision_exactly_once() {
        let seen = [put(2, "a", 1), put(3, "b", 2), del(4, "a")];
        assert_eq!(check_every_revision(&seen, 2, 4), Ok(()));
        let table: Vec<(&str, Vec<E>, WatchViolation<&str, u32>)> = vec![
            (
                "a revision skipped",
                vec![seen[0].clone(), seen[2].clone()],
                WatchViolation::RevisionGap {
                    expected: 3,
                    seen: Some(4),
                },
            ),
            (
                "a revision repeated",
                vec![seen[0].clone(), seen[0].clone()],
                WatchViolation::RevisionGap {
                    expected: 3,
                    seen: Some(2),
                },
            ),
            (
                "ended early",
                seen[..2].to_vec(),
                WatchViolation::RevisionGap {
                    expected: 4,
                    seen: None,
                },
            ),
            (
                "past the end",
                vec![
                    seen[0].clone(),
                    seen[1].clone(),
                    seen[2].clone(),
                    put(5, "c", 3),
                ],
                WatchViolation::RevisionGap {
                    expected: 5,
                    seen: Some(5),
                },
            ),
        ];
        for (what, s, want) in table {
            assert_eq!(check_every_revision(&s, 2, 4), Err(want), "{what}");
        }
    }

    #[test]
    fn every_acknowledged_write_is_in_the_committed_history() {
        let c = committed();
        assert_eq!(check_acked(&c, &[put(3, "b", 2), del(4, "a")]), Ok(()));
        assert_eq!(
            check_acked(&c, &[put(7, "b", 6)]),
            Err(WatchViolation::Missing {
                event: put(7, "b", 6)
            })
        );
        assert_eq!(
            check_acked(&c, &[put(6, "b", 9)]),
            Err(WatchViolation::Mismatch {
                committed: put(6, "b", 5),
                seen: put(6, "b", 9)
            })
        );
    }
}
