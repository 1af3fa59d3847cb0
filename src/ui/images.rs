//! Reading and decoding images off the UI thread: files the user drops or picks, pasted
//! images, and thumbnails of the images already in a conversation. A 50 MP photo takes a worker
//! a second to decode; the UI only ever receives small thumbnails.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use egui::ColorImage;

use crate::chat::ImageData;
use crate::preprocess::decode_rgb;
use crate::ui::messages::Refusal;

/// Longest side of a thumbnail, in pixels.
pub const THUMB_SIZE: u32 = 256;
/// Longest side of an image shown large.
pub const LARGE_SIZE: u32 = 1280;

pub enum ImageJob {
    /// A file to attach to the question being written.
    File { key: u64, path: PathBuf },
    /// An image pasted from the clipboard.
    Pasted { key: u64, name: String, image: Arc<ColorImage> },
    /// The thumbnail of an image already in the conversation.
    Thumbnail { hash: String, name: String, bytes: Arc<[u8]> },
    /// An image of the conversation at a size to look at.
    Large { hash: String, name: String, bytes: Arc<[u8]> },
}

pub enum ImageResult {
    Attached { key: u64, image: ImageData, thumb: ColorImage },
    Refused { key: u64, name: String, refusal: Refusal },
    Thumbnail { hash: String, thumb: Result<ColorImage, String> },
    Large { hash: String, image: Result<ColorImage, String> },
}

pub struct ImageWorker {
    tx: Option<Sender<ImageJob>>,
    rx: Receiver<ImageResult>,
    threads: Vec<JoinHandle<()>>,
}

impl ImageWorker {
    pub fn spawn(threads: usize, waker: Arc<dyn Fn() + Send + Sync>) -> Self {
        let (tx, job_rx) = crossbeam_channel::unbounded::<ImageJob>();
        let (res_tx, rx) = crossbeam_channel::unbounded();
        let threads = (0..threads.max(1))
            .map(|i| {
                let job_rx = job_rx.clone();
                let res_tx = res_tx.clone();
                let waker = waker.clone();
                std::thread::Builder::new()
                    .name(format!("ziya-images-{i}"))
                    .spawn(move || {
                        for job in job_rx {
                            // A decoder bug must not leave the job unanswered (the attachment
                            // would wait forever) nor end this worker.
                            let failed = failure_for(&job);
                            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| process(job)))
                                .unwrap_or(failed);
                            let _ = res_tx.send(result);
                            waker();
                        }
                    })
                    .expect("spawning an image thread")
            })
            .collect();
        Self { tx: Some(tx), rx, threads }
    }

    pub fn submit(&self, job: ImageJob) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(job);
        }
    }

    pub fn try_recv(&self) -> Option<ImageResult> {
        self.rx.try_recv().ok()
    }
}

impl Drop for ImageWorker {
    fn drop(&mut self) {
        self.tx = None; // ends the workers' loops
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// What a job answers when decoding fails unexpectedly.
fn failure_for(job: &ImageJob) -> ImageResult {
    let msg = "the decoder failed on this file";
    match job {
        ImageJob::File { key, path } => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            ImageResult::Refused { key: *key, name, refusal: Refusal::NotAnImage(msg.into()) }
        }
        ImageJob::Pasted { key, name, .. } => {
            ImageResult::Refused { key: *key, name: name.clone(), refusal: Refusal::NotAnImage(msg.into()) }
        }
        ImageJob::Thumbnail { hash, .. } => ImageResult::Thumbnail { hash: hash.clone(), thumb: Err(msg.into()) },
        ImageJob::Large { hash, .. } => ImageResult::Large { hash: hash.clone(), image: Err(msg.into()) },
    }
}

fn process(job: ImageJob) -> ImageResult {
    match job {
        ImageJob::File { key, path } => {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            match read_image(&path) {
                Ok((image, thumb)) => ImageResult::Attached { key, image, thumb },
                Err(refusal) => ImageResult::Refused { key, name, refusal },
            }
        }
        ImageJob::Pasted { key, name, image } => match encode_png(&image).and_then(|bytes| {
            let thumb = thumbnail(&bytes, &name)?;
            Ok((bytes, thumb))
        }) {
            Ok((bytes, thumb)) => ImageResult::Attached { key, image: ImageData::new(name, bytes), thumb },
            Err(e) => ImageResult::Refused { key, name, refusal: Refusal::NotAnImage(e) },
        },
        ImageJob::Thumbnail { hash, name, bytes } => ImageResult::Thumbnail { hash, thumb: thumbnail(&bytes, &name) },
        ImageJob::Large { hash, name, bytes } => ImageResult::Large { hash, image: scaled(&bytes, &name, LARGE_SIZE) },
    }
}

/// Reads and checks an image file; returns its data and thumbnail.
pub fn read_image(path: &std::path::Path) -> Result<(ImageData, ColorImage), Refusal> {
    let bytes = crate::preprocess::read_image_file(path).map_err(|e| match e {
        crate::Error::Io { source, .. } => Refusal::Unreadable(source.to_string()),
        crate::Error::Image { msg, .. } => Refusal::NotAnImage(msg),
        other => Refusal::Unreadable(other.to_string()),
    })?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let thumb = thumbnail(&bytes, &name).map_err(Refusal::NotAnImage)?;
    Ok((ImageData::new(name, bytes), thumb))
}

/// A thumbnail of encoded image bytes, with the EXIF orientation the model sees.
pub fn thumbnail(bytes: &[u8], name: &str) -> Result<ColorImage, String> {
    scaled(bytes, name, THUMB_SIZE)
}

/// The image at most `size` pixels on its longest side.
fn scaled(bytes: &[u8], name: &str, size: u32) -> Result<ColorImage, String> {
    let rgb = decode_rgb(bytes, name).map_err(|e| match e {
        crate::Error::Image { msg, .. } => msg,
        other => other.to_string(),
    })?;
    let (w, h) = rgb.dimensions();
    let scale = (size as f32 / w.max(h) as f32).min(1.0);
    let (tw, th) = (((w as f32 * scale).round() as u32).max(1), ((h as f32 * scale).round() as u32).max(1));
    let small = image::imageops::thumbnail(&rgb, tw, th);
    Ok(ColorImage::from_rgb([tw as usize, th as usize], small.as_raw()))
}

fn encode_png(image: &ColorImage) -> Result<Vec<u8>, String> {
    let [w, h] = image.size;
    let rgba: Vec<u8> = image.pixels.iter().flat_map(|c| c.to_srgba_unmultiplied()).collect();
    let buf = image::RgbaImage::from_raw(w as u32, h as u32, rgba).ok_or("pasted image has no pixels")?;
    let mut out = std::io::Cursor::new(Vec::new());
    buf.write_to(&mut out, image::ImageFormat::Png).map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}
