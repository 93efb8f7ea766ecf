//! Where a run's output goes while it happens: a cheap, clonable line sink. The store writer
//! (`run_log`) drains it into chunks; tests drain it into memory.

use tokio::sync::mpsc;

/// Lines of a run's log. Sending never blocks and never fails the run: if the writer is gone
/// the line is dropped.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<String>,
}

impl LogSink {
    pub fn channel() -> (LogSink, mpsc::UnboundedReceiver<String>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink { tx }, rx)
    }

    /// Appends `text`; a missing final newline is added.
    pub fn line(&self, text: impl Into<String>) {
        let mut text = text.into();
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let _ = self.tx.send(text);
    }

    /// Appends raw output (build output arrives with its own newlines).
    pub fn raw(&self, text: impl Into<String>) {
        let text = text.into();
        if !text.is_empty() {
            let _ = self.tx.send(text);
        }
    }
}

/// Everything sent to a sink, once every clone of it is dropped.
pub async fn collect(mut rx: mpsc::UnboundedReceiver<String>) -> String {
    let mut out = String::new();
    while let Some(s) = rx.recv().await {
        out.push_str(&s);
    }
    out
}
