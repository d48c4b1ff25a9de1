//! `control-plane`: Meridian's control plane binary.

use std::path::PathBuf;
use std::process::ExitCode;

mod serve;

use clap::{Parser, Subcommand};
use control_plane::offline::{self, Client};
use policy::Location;

/// Meridian's control plane.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the admin, edge and agent APIs over the configured store.
    Serve {
        /// The configuration file (TOML); see examples/control-plane.toml.
        #[arg(long)]
        config: PathBuf,
        /// Check the configuration (and its seed catalog), print a summary and exit.
        #[arg(long)]
        validate_config: bool,
        /// Address to listen on, overriding the file and MERIDIAN_LISTEN.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Check a catalog file: every problem with its path and fix, or its warnings.
    ValidateCatalog {
        /// The catalog (TOML, or JSON when it ends in .json).
        file: PathBuf,
    },
    /// Show where a request would run if every region were healthy and idle, and why
    /// each other region would not be used.
    Route {
        /// The catalog (TOML, or JSON when it ends in .json).
        file: PathBuf,
        /// Tenant id.
        #[arg(long)]
        tenant: String,
        /// Model id (owner/name).
        #[arg(long)]
        model: String,
        /// Client location as LAT,LON in decimal degrees.
        #[arg(long, value_parser = parse_location, conflicts_with = "client_ip", required_unless_present = "client_ip")]
        from: Option<Location>,
        /// Client IP address, resolved with --geoip.
        #[arg(long, requires = "geoip")]
        client_ip: Option<std::net::IpAddr>,
        /// GeoIP2/GeoLite2 City database for --client-ip.
        #[arg(long)]
        geoip: Option<PathBuf>,
        /// Units of work (images, megapixels, seconds, …).
        #[arg(long, default_value_t = 1.0)]
        units: f64,
    },
}

fn parse_location(text: &str) -> Result<Location, String> {
    let (lat, lon) = text
        .split_once(',')
        .ok_or_else(|| format!("{text:?} is not LAT,LON (e.g. 51.5,-0.13)"))?;
    let parse = |v: &str| {
        v.trim()
            .parse::<f64>()
            .map_err(|_| format!("{v:?} is not a number"))
    };
    Ok(Location::new(parse(lat)?, parse(lon)?))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init("control-plane") {
        eprintln!("control-plane: {e}");
        return ExitCode::from(2);
    }
    let result = match cli.command {
        Command::Serve {
            config,
            validate_config,
            listen,
        } => serve::main(&config, validate_config, listen),
        Command::ValidateCatalog { file } => offline::validate_catalog(&file),
        Command::Route {
            file,
            tenant,
            model,
            from,
            client_ip,
            geoip,
            units,
        } => {
            let client = match (from, client_ip, geoip) {
                (Some(at), _, _) => Client::At(at),
                (None, Some(ip), Some(database)) => Client::Address { ip, database },
                _ => unreachable_args(),
            };
            offline::explain_route(&file, &tenant, &model, &client, units)
        }
    };
    match result {
        Ok(text) => {
            #[allow(clippy::print_stdout)]
            {
                println!("{text}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("control-plane: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// clap enforces `--from` or `--client-ip` with `--geoip`; reaching here is a bug in the
/// argument definitions, reported like any other usage error.
fn unreachable_args() -> ! {
    eprintln!("control-plane route: give --from LAT,LON, or --client-ip with --geoip");
    std::process::exit(2)
}
