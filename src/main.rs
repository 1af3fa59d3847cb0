use clap::Parser;
use ziya_visual::cli::{run_ask, Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Some(Command::Ask(args)) => run_ask(args),
        Some(Command::Export { session, html, markdown }) => {
            ziya_visual::cli::run_export(session, html.as_deref(), markdown.as_deref())
        }
        Some(Command::Quantize { llm_model, llm_base, quant, out }) => {
            ziya_visual::cli::run_quantize(llm_model, llm_base.as_deref(), *quant, out)
        }
        Some(Command::MergeDelta { base, delta, out }) => ziya_visual::cli::run_merge_delta(base, delta, out),
        Some(Command::Plan { vision_model, llm_model, dtype, quant, device, prompt, context }) => {
            ziya_visual::cli::run_plan(vision_model, llm_model, dtype, *quant, device, *prompt, *context)
        }
        Some(Command::MakeRandomModel { preset, out, seed }) => ziya_visual::model::random::write(out, *preset, *seed)
            .map(|(v, l)| {
                println!("{}\n{}", v.display(), l.display());
            }),
        None => {
            let options = ziya_visual::ui::AppOptions {
                vision_model: cli.vision_model.clone(),
                llm_model: cli.llm_model.clone().or_else(|| cli.llm_delta.clone()),
                llm_base: cli.llm_base.clone(),
                device: cli.device.clone(),
                dtype: cli.dtype.clone(),
                quant: cli.quant,
                demo: cli.demo,
                session: cli.session.clone(),
                ..Default::default()
            };
            ziya_visual::ui::run(options).map_err(|e| ziya_visual::Error::Request(e.to_string()))
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
