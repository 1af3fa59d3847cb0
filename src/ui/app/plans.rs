//! The model panel's memory estimates, worked out on a thread of their own: reading a model's
//! folders (configs, tokenizer, a GGUF's header) takes long enough to stall a frame, and the
//! panel asks again whenever a folder or the precision changes.

use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use crate::model::choice::ModelChoice;
use crate::model::files::ModelFiles;
use crate::model::layers::Quant;
use crate::model::plan::{available_bytes, PREFILL_CHUNK};
use crate::ui::state::PlanRows;

pub(super) struct Planner {
    tx: Option<Sender<ModelChoice>>,
    rx: Receiver<PlanRows>,
    /// The last choice asked for (asked once, however many frames show it).
    requested: Option<ModelChoice>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Planner {
    pub(super) fn spawn(waker: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, job_rx) = crossbeam_channel::unbounded::<ModelChoice>();
        let (res_tx, rx) = crossbeam_channel::unbounded();
        let thread = std::thread::Builder::new()
            .name("ziya-planner".into())
            .spawn(move || {
                while let Ok(mut choice) = job_rx.recv() {
                    // Only the newest request matters (the user may still be typing a path).
                    while let Ok(newer) = job_rx.try_recv() {
                        choice = newer;
                    }
                    let _ = res_tx.send(plan_rows(choice));
                    waker();
                }
            })
            .expect("spawning the planner thread");
        Self { tx: Some(tx), rx, requested: None, thread: Some(thread) }
    }

    pub(super) fn request(&mut self, choice: &ModelChoice) {
        if self.requested.as_ref() == Some(choice) {
            return;
        }
        self.requested = Some(choice.clone());
        if let Some(tx) = &self.tx {
            let _ = tx.send(choice.clone());
        }
    }

    pub(super) fn try_recv(&self) -> Option<PlanRows> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Planner {
    fn drop(&mut self) {
        self.tx = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Estimates for no quantization, q8_0, q6k and q4k with the choice's folders and precision, on
/// the device chosen (not opened: free memory is only known for the CPU).
fn plan_rows(choice: ModelChoice) -> PlanRows {
    let on_cpu = choice.device == crate::device::DeviceKind::Cpu;
    let (dtype, _) = choice.precision.effective(on_cpu);
    let rows = ModelFiles::read(&choice).map_err(|e| e.to_string()).map(|files| {
        let context = files.context_length();
        let prompt = PREFILL_CHUNK.min(context);
        std::iter::once(None)
            .chain(Quant::ALL.into_iter().map(Some))
            .map(|q| (q, files.plan_with(q, dtype, on_cpu, prompt, context)))
            .collect()
    });
    // The same figure the engine checks against (ZIYA_VISUAL_MEMORY_LIMIT included).
    PlanRows { choice, rows, free: if on_cpu { available_bytes(&candle_core::Device::Cpu) } else { None } }
}
