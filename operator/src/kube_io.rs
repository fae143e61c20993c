//! The two writes every controller makes the same way: an Event about its
//! object, and a server-side apply of its object's status.

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
