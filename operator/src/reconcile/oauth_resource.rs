//! `OAuthResource` → its `Claimed` condition: whether it holds its audience
//! or, when an older resource does, which one (`sigil_crds::grant::holders`
//! decides). What it grants reaches clients through their own reconciles.

use std::sync::Arc;

use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use sigil_crds::grant::{self, ResourceRef};
use sigil_crds::oauth_resource::CONDITION_CLAIMED;
use sigil_crds::{OAuthResource, OAuthResourceStatus, Reason};

use super::{condition, write_status};
use crate::context::{Context, Error, Result};

pub async fn reconcile(resource: Arc<OAuthResource>, ctx: Arc<Context>) -> Result<Action> {
    super::instrumented(
        resource.clone(),
        ctx.clone(),
        reconcile_claim(&resource, &ctx),
    )
    .await
}

#[tracing::instrument(skip_all, fields(resource = %ResourceRef::of(resource)))]
async fn reconcile_claim(resource: &OAuthResource, ctx: &Context) -> Result<Action> {
    if resource.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = resource
        .namespace()
        .ok_or_else(|| Error::Invalid("OAuthResource without a namespace".to_owned()))?;
    let all = ctx.grants.resources.state();
    let holders = grant::holders(all.iter().map(|r| r.as_ref()));
    let audience = &resource.spec.audience;
    let holder = holders
        .get(audience)
        .map(|h| ResourceRef::of(h))
        .unwrap_or_else(|| ResourceRef::of(resource));
    let holds = holder == ResourceRef::of(resource);
    let (reason, message) = if holds {
        (
            Reason::AudienceClaimed,
            format!("holds audience {audience}"),
        )
    } else {
        (
            Reason::AudienceConflict,
            format!(
                "audience {audience} is held by OAuthResource {holder}, which was created first; its grants apply"
            ),
        )
    };
    let old = resource.status.clone().unwrap_or_default();
    let generation = resource.metadata.generation;
    let new = OAuthResourceStatus {
        observed_generation: generation,
        conditions: vec![condition(
            CONDITION_CLAIMED,
            &old.conditions,
            holds,
            reason,
            message.clone(),
            generation,
            Timestamp::now(),
        )],
    };
    let changed_reason = old
        .conditions
        .iter()
        .find(|c| c.type_ == CONDITION_CLAIMED)
        .is_none_or(|c| c.reason != reason.as_str());
    let api: Api<OAuthResource> = Api::namespaced(ctx.client.clone(), &namespace);
    write_status(&api, &resource.name_any(), &old, new).await?;
    if changed_reason {
        let kind = if holds {
            EventType::Normal
        } else {
            EventType::Warning
        };
        ctx.event(resource, kind, reason.as_str(), "ClaimAudience", message)
            .await;
    }
    Ok(Action::await_change())
}
