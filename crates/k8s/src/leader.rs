//! Leader election over a `coordination.k8s.io/v1` Lease, so that of several
//! `gateway-management` replicas one runs the controller (all serve the API).
//!
//! The holder renews the Lease every `ttl / 3`; another replica takes it over once it has not
//! been renewed for `ttl`. Every write carries the Lease's `resourceVersion`, so two replicas
//! racing for it cannot both win (the API server refuses the second with 409). A holder that
//! stops ([`LeaderElection::release`]) gives the Lease up, so another replica takes over at its
//! next try (`ttl / 3`) instead of after `ttl`: a rolling update of gateway-management leaves
//! the controller stopped for seconds, not a whole lease period.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::watch;

/// Runs the election until dropped; `leading` says whether this replica holds the Lease.
pub struct LeaderElection {
    pub leading: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
    api: Api<Lease>,
    lease: String,
    identity: String,
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaderElection {
    pub fn start(
        client: kube::Client,
        namespace: &str,
        lease: &str,
        identity: String,
        ttl: Duration,
    ) -> Self {
        let api: Api<Lease> = Api::namespaced(client, namespace);
        let (tx, leading) = watch::channel(false);
        let lease = lease.to_owned();
        let (task_api, task_lease, task_identity) = (api.clone(), lease.clone(), identity.clone());
        let task = tokio::spawn(async move {
            let (api, lease, identity) = (task_api, task_lease, task_identity);
            loop {
                let held = match try_hold(&api, &lease, &identity, ttl).await {
                    Ok(held) => held,
                    Err(e) => {
                        tracing::warn!(error = %e, "leader election");
                        false
                    }
                };
                if *tx.borrow() != held {
                    tracing::info!(%identity, leading = held, "leader election");
                    let _ = tx.send(held);
                }
                tokio::time::sleep(ttl / 3).await;
            }
        });
        Self {
            leading,
            task,
            api,
            lease,
            identity,
        }
    }

    /// Stops renewing and, if this replica holds the Lease, gives it up (holder cleared, at the
    /// `resourceVersion` read, so a replica that took it meanwhile keeps it). Best effort: a
    /// failure leaves the Lease to expire after its duration.
    pub async fn release(&mut self) {
        self.task.abort();
        let Ok(Some(mut lease)) = self.api.get_opt(&self.lease).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            Timestamp::now(),
        ));
        match self
            .api
            .replace(&self.lease, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => tracing::info!(identity = %self.identity, "gave up the controller lease"),
            Err(e) => {
                tracing::warn!(error = %e, "giving up the controller lease failed; it expires on its own")
            }
        }
    }

    /// Resolves once this replica leads.
    pub async fn until_leading(&mut self) {
        let _ = self.leading.wait_for(|l| *l).await;
    }
}

async fn try_hold(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    ttl: Duration,
) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let spec = |transitions: i32, acquired: String| {
        json!({
            "holderIdentity": me,
            "leaseDurationSeconds": ttl.as_secs().max(1),
            "acquireTime": acquired,
            "renewTime": now.to_string(),
            "leaseTransitions": transitions,
        })
    };
    let Some(current) = api.get_opt(name).await? else {
        let lease: Lease = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": spec(0, now.to_string()),
        }))
        .expect("a valid Lease");
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let s = current.spec.clone().unwrap_or_default();
    let holder = s.holder_identity.clone().unwrap_or_default();
    let renewed = s.renew_time.as_ref().map(|t| t.0);
    let duration = Duration::from_secs(s.lease_duration_seconds.unwrap_or(15).max(1) as u64);
    let expired = renewed.is_none_or(|r| now.duration_since(r).unsigned_abs() > duration);
    if holder != me && !holder.is_empty() && !expired {
        return Ok(false);
    }
    let transitions = s.lease_transitions.unwrap_or(0) + i32::from(holder != me);
    let acquired = if holder == me {
        s.acquire_time
            .map_or_else(|| now.to_string(), |t| t.0.to_string())
    } else {
        now.to_string()
    };
    let mut next = current;
    next.spec =
        Some(serde_json::from_value(spec(transitions, acquired)).expect("a valid LeaseSpec"));
    // replace carries metadata.resourceVersion: a concurrent writer makes this a 409.
    match api.replace(name, &PostParams::default(), &next).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}
