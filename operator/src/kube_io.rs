//! The two writes every controller makes the same way: an Event about its
//! object, and a server-side apply of its object's status; and the one way
//! Secret data is read as text.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::builders::FIELD_MANAGER;
use crate::reconcile::Error;

/// Publishes an Event about `object`; failing to record one never fails a
/// reconcile (it is logged).
pub async fn publish_event<K: Resource<DynamicType = ()>>(
    recorder: &Recorder,
    object: &K,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    if let Err(error) = recorder.publish(&event, &object.object_ref(&())).await {
        tracing::warn!(%error, "publishing event failed");
    }
}

/// Server-side applies `status` as the status of the `titan.dev/v1alpha1`
/// object `kind`/`name`, as the operator's field manager (forced).
pub async fn apply_status<K, S>(
    api: &Api<K>,
    kind: &str,
    name: &str,
    status: &S,
    op: &'static str,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": "titan.dev/v1alpha1",
        "kind": kind,
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::kube(op))?;
    Ok(())
}

/// The value of `key` in a Secret's data as text; `None` when it is absent
/// or not UTF-8.
pub fn secret_text(secret: &Secret, key: &str) -> Option<String> {
    String::from_utf8(secret.data.as_ref()?.get(key)?.0.clone()).ok()
}

/// Every text entry of a Secret's data (entries that are not UTF-8 are left
/// out); empty for no Secret.
pub fn secret_texts(secret: Option<&Secret>) -> BTreeMap<String, String> {
    let Some(secret) = secret else {
        return BTreeMap::new();
    };
    let keys = secret.data.iter().flat_map(|d| d.keys());
    keys.filter_map(|k| Some((k.clone(), secret_text(secret, k)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;

    use super::*;

    #[test]
    fn secret_text_reads_utf8_values_and_leaves_out_the_rest() {
        let secret = Secret {
            data: Some(BTreeMap::from([
                ("ca.crt".to_string(), ByteString(b"PEM".to_vec())),
                ("bad".to_string(), ByteString(vec![0xff, 0xfe])),
            ])),
            ..Secret::default()
        };
        assert_eq!(secret_text(&secret, "ca.crt").as_deref(), Some("PEM"));
        assert_eq!(secret_text(&secret, "bad"), None);
        assert_eq!(secret_text(&secret, "missing"), None);
        assert_eq!(
            secret_texts(Some(&secret)),
            BTreeMap::from([("ca.crt".to_string(), "PEM".to_string())])
        );
        assert!(secret_texts(None).is_empty());
        assert!(secret_texts(Some(&Secret::default())).is_empty());
    }
}
