use anyhow::Context;
use clap::Parser;
use elb_userspace::{
    cli::{Cli, Command, RunArgs},
    dataplane::{DataplaneConfig, XdpDataplane},
    instance_lock::InstanceLock,
};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                match cli.command {
                    Command::Run(args) => run(args).await,
                }
            })
        });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole cause chain on one line, no backtrace.
            eprintln!("elb: error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let _lock = InstanceLock::acquire(&args.run_dir, &args.name)?;
    let config = DataplaneConfig {
        name: args.name.clone(),
        bpffs_root: args.bpffs.clone(),
        interfaces: args.xdp_ifaces.clone(),
        mode: args.xdp_mode,
    };
    let dataplane = XdpDataplane::start(&config)?;
    tracing::info!(
        name = args.name,
        pins = %dataplane.pin_dir().display(),
        "elb running; inspect with `bpftool map dump pinned {}/<map>`",
        dataplane.pin_dir().display()
    );

    wait_for_shutdown_signal().await?;
    tracing::info!("shutting down");
    dataplane.shutdown()?;
    Ok(())
}

async fn wait_for_shutdown_signal() -> anyhow::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    Ok(())
}
