//! `cargo xtask openapi [--check]`: writes the management API's OpenAPI document, generated
//! from the code of `crates/api`, to `openapi/mcp-gateway.openapi.json`; with `--check`, fails
//! when the checked-in file differs (CI).

use anyhow::{Context, bail};
use mcp_gateway_api::openapi::{CHECKED_IN_PATH, json};

pub fn run(check: bool) -> anyhow::Result<()> {
    let path = crate::root().join(CHECKED_IN_PATH);
    let generated = json();
    if check {
        let current = std::fs::read_to_string(&path).unwrap_or_default();
        if current != generated {
            bail!(
                "{} is stale: run `cargo xtask openapi` and commit the result",
                path.display()
            );
        }
        eprintln!("xtask: {} is up to date", path.display());
        return Ok(());
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, generated).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("xtask: wrote {}", path.display());
    Ok(())
}
