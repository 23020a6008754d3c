//! `switchboard [serve]`: loads configuration, starts the server, prints where to
//! connect, and drains on SIGTERM / Ctrl-C.

use clap::{Parser, Subcommand};
use switchboard::config::Config;

#[derive(Parser)]
#[command(
    name = "switchboard",
    version,
    about = "Multi-tenant realtime messaging server"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default). Settings come from config/*.toml and the
    /// environment (SWITCHBOARD_BIND, SWITCHBOARD_DATA_DIR, ADMIN_TOKEN, …).
    Serve,
    /// Print every setting with its default value, as TOML.
    Defaults,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(),
        Command::Defaults => {
            print!("{}", toml::to_string(&Config::default())?);
            Ok(())
        }
    }
}

fn serve() -> anyhow::Result<()> {
    let config = Config::load()?;
    switchboard::logging::init(&config.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(switchboard::server::BLOCKING_THREADS)
        .build()?;
    runtime.block_on(async move {
        let data_dir = config.data_dir.clone();
        let running = switchboard::server::start(config).await?;
        let addr = running.addr;
        println!("Switchboard listening on http://{addr}");
        println!("  WebSocket: ws://{addr}/v1/ws?token=<device token>");
        println!("  Health:    http://{addr}/health   OpenAPI: http://{addr}/openapi.json");
        println!("  Data dir:  {}", data_dir.display());
        if running.admin_token_generated {
            println!(
                "  Admin token (generated, shown once; kept in {}/admin_token): {}",
                data_dir.display(),
                running.admin_token
            );
        } else {
            println!(
                "  Admin token: from ADMIN_TOKEN or {}/admin_token",
                data_dir.display()
            );
        }
        let mut running = running;
        let escalated = tokio::select! {
            _ = wait_for_signal() => false,
            _ = running.root_stopped() => true,
        };
        running.shutdown().await;
        if escalated {
            // A failure escalated past the root supervisor: exit non-zero so the
            // orchestrator (systemd, Kubernetes) restarts the process.
            anyhow::bail!("the actor tree's root supervisor stopped");
        }
        anyhow::Ok(())
    })?;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
