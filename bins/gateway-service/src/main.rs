//! `gateway-service`: parse the configuration, start the gateway, stop on SIGTERM/SIGINT.

use clap::Parser;
use gateway_service::{Args, Command, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::ApiKey { subject, roles }) = &args.command {
        #[allow(clippy::print_stdout)] // the command's output
        {
            print!("{}", gateway_service::new_api_key(subject, roles)?);
        }
        return Ok(());
    }
    gateway_service::serve_until_signal(Config::resolve(args)?).await
}
