//! Serves any stdio MCP server over HTTP by hand, e.g.
//! `cargo run -p mcp-gateway-stdio --example bridge -- npx -y @modelcontextprotocol/server-everything stdio`
//! then point an MCP client at the printed `/mcp` (or `/sse`) URL. Ctrl-C stops every process.

use mcp_gateway_stdio::{BridgeConfig, StdioBridge};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut argv = std::env::args().skip(1);
    let command = argv.next().ok_or("usage: bridge COMMAND [ARGS...]")?;
    let config = BridgeConfig::new(command, argv).on_log(|line| {
        eprintln!(
            "[{} pid {}] {:?}: {}",
            line.session, line.pid, line.source, line.line
        )
    });
    let bridge = StdioBridge::start(config).await?;
    eprintln!("streamable HTTP: http://{}/mcp", bridge.local_addr());
    eprintln!("HTTP+SSE:        http://{}/sse", bridge.local_addr());
    tokio::signal::ctrl_c().await?;
    bridge.shutdown().await;
    Ok(())
}
