//! The embedded control plane of standalone mode: the management API over adapter records in
//! the data directory, deployed by the local runtime (child processes; stdio servers through
//! the stdio bridge), which keeps the data plane's resolver current.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use http::{HeaderName, HeaderValue};
use mcp_gateway_core::{
    Adapter, AdapterError, AdapterStore, Authorizer, Provisioner, SessionStore, StaticResolver,
};
use mcp_gateway_local::{FileAdapterStore, LocalOptions, LocalProvisioner, LogSink, StdioLauncher};
use mcp_gateway_stdio::{BridgeConfig, LogSource, StdioBridge as Bridge};

/// The running control plane.
pub struct Management {
    pub router: axum::Router,
    pub provisioner: Arc<LocalProvisioner>,
}

/// Opens the data directory, redeploys every stored adapter, and builds the API.
pub async fn start(
    data_dir: &Path,
    resolver: Arc<StaticResolver>,
    sessions: Arc<dyn SessionStore>,
    authorizer: Arc<dyn Authorizer>,
    options: mcp_gateway_api::ApiOptions,
    configured: Vec<mcp_gateway_core::AdapterName>,
    audit: Option<Arc<dyn mcp_gateway_core::AuditSink>>,
) -> anyhow::Result<Management> {
    let adapters = Arc::new(
        FileAdapterStore::open(data_dir)
            .await
            .with_context(|| format!("cannot use data directory {}", data_dir.display()))?,
    );
    // Replicas of a previous run that outlived it (the gateway was killed): stopped before
    // their successors start, so no adapter runs twice.
    let run_dir = data_dir.join("run");
    let reaped = {
        let (dir, grace) = (run_dir.clone(), LocalOptions::default().kill_grace);
        tokio::task::spawn_blocking(move || mcp_gateway_local::reap_orphans(&dir, grace))
            .await
            .unwrap_or(0)
    };
    if reaped > 0 {
        tracing::warn!(
            processes = reaped,
            "stopped replicas left running by a previous gateway run"
        );
    }
    let provisioner = Arc::new(
        LocalProvisioner::new(
            resolver,
            LocalOptions {
                reserved_names: configured,
                run_dir: Some(run_dir),
                ..LocalOptions::default()
            },
        )
        .with_session_store(sessions.clone())
        .with_stdio_launcher(Arc::new(BridgeLauncher)),
    );
    // Adapters come back as they were before the restart.
    let stored = adapters.list().await?;
    for adapter in &stored {
        if let Err(e) = provisioner.apply(adapter).await {
            tracing::error!(adapter = %adapter.spec.name, error = %e, "could not redeploy a stored adapter");
        }
    }
    tracing::info!(adapters = stored.len(), dir = %data_dir.display(), "management API enabled (local runtime)");
    let mut state = mcp_gateway_api::ApiState::new(adapters, provisioner.clone(), sessions)
        .with_options(options)
        .with_authorizer(authorizer);
    if let Some(sink) = audit {
        state = state.with_audit(sink);
    }
    Ok(Management {
        router: mcp_gateway_api::router(state),
        provisioner,
    })
}

/// Runs `stdio` adapters through [`mcp_gateway_stdio`]: one bridge per adapter on a loopback
/// port, one process per MCP session behind it.
struct BridgeLauncher;

#[async_trait::async_trait]
impl StdioLauncher for BridgeLauncher {
    async fn launch(
        &self,
        adapter: &Adapter,
        logs: LogSink,
    ) -> Result<mcp_gateway_local::StdioBridge, AdapterError> {
        let spec = &adapter.spec;
        let command = spec
            .command
            .clone()
            .ok_or_else(|| AdapterError::Invalid("a stdio adapter needs a command".into()))?;
        let mut config = BridgeConfig::new(command, spec.args.clone()).on_log(move |line| {
            // Each line names the process (and so the session) it came from.
            let text = format!("[pid {} session {}] {}", line.pid, line.session, line.line);
            match line.source {
                LogSource::Stderr => logs.stderr(&text),
                _ => logs.stdout(&text),
            }
        });
        // Like the local runtime's processes: a few variables of the gateway's environment
        // (secrets stay out), then the adapter's own.
        config.clear_env = true;
        config.env = LocalOptions::default()
            .pass_env
            .iter()
            .filter_map(|k| std::env::var(k).ok().map(|v| (k.clone(), v)))
            .collect();
        config.env.extend(spec.environment_variables.clone());
        // Only the data plane may reach the bridge: it adds this token to every request.
        let token = mcp_gateway_stdio::random_token();
        let token_header = HeaderValue::from_str(&token)
            .map_err(|_| AdapterError::Unavailable("the bridge's token is not a header".into()))?;
        config.access_token = Some(token);
        let handle = Bridge::start(config)
            .await
            .map_err(|e| AdapterError::Invalid(format!("cannot start the stdio bridge: {e}")))?;
        Ok(mcp_gateway_local::StdioBridge {
            base_urls: vec![format!("http://{}", handle.local_addr())],
            mcp_path: "/mcp".into(),
            sse_path: "/sse".into(),
            upstream_headers: vec![(
                HeaderName::from_static(mcp_gateway_stdio::ACCESS_TOKEN_HEADER),
                token_header,
            )],
            stop: Box::pin(handle.shutdown()),
        })
    }
}
