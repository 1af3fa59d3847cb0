//! Stop strings over streamed text: the answer ends where one first appears (the stop string
//! itself is cut off, as OpenAI does), and text that might be the start of one is held back
//! until the next piece shows whether it is.

pub struct StopScanner {
    stops: Vec<String>,
    /// The answer so far, cut at the stop string once one is found.
    text: String,
    /// Bytes of `text` handed out.
    released: usize,
    stopped: bool,
}

impl StopScanner {
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            text: String::new(),
            released: 0,
            stopped: false,
        }
    }

    /// Adds a piece of the answer; returns the text that can be sent now, and whether a stop
    /// string has now been found (nothing more is taken after that).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        if self.stopped {
            return (String::new(), false);
        }
        self.text.push_str(piece);
        // A match cannot start in released text: text that might begin one is held back.
        let pending = &self.text[self.released..];
        let found = self.stops.iter().filter_map(|s| pending.find(s.as_str())).min();
        if let Some(at) = found {
            let end = self.released + at;
            self.text.truncate(end);
            self.stopped = true;
            return (self.release(end), true);
        }
        let hold = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).rev().filter(|&k| s.is_char_boundary(k)).map(move |k| &s[..k]))
            .filter(|prefix| pending.ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let end = self.text.len() - hold;
        (self.release(end), false)
    }

    /// The text held back, once the answer has ended.
    pub fn finish(&mut self) -> String {
        self.release(self.text.len())
    }

    /// The answer (cut at the stop string, if one was found).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    fn release(&mut self, end: usize) -> String {
        let out = self.text[self.released..end].to_string();
        self.released = end;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `pieces`; returns what was sent, piece by piece, and whether it stopped.
    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool, String) {
        let mut s = StopScanner::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        let mut stopped = false;
        for p in pieces {
            let (out, hit) = s.push(p);
            sent.push(out);
            stopped |= hit;
        }
        sent.push(s.finish());
        let joined = sent.concat();
        assert_eq!(joined, s.text(), "what is sent is the answer");
        (sent, stopped, joined)
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let (sent, stopped, _) = run(&[], &["a", "b"]);
        assert_eq!(sent, vec!["a", "b", ""]);
        assert!(!stopped);
    }

    #[test]
    fn a_stop_across_pieces_is_held_back_and_cut() {
        let (sent, stopped, text) = run(&["END"], &["hello E", "N", "D and more"]);
        assert_eq!(sent, vec!["hello ", "", "", ""]);
        assert!(stopped);
        assert_eq!(text, "hello ");
    }

    #[test]
    fn a_false_start_is_released_when_it_stops_matching() {
        let (sent, stopped, text) = run(&["END"], &["E", "Nx", " done"]);
        assert_eq!(sent, vec!["", "ENx", " done", ""]);
        assert!(!stopped);
        assert_eq!(text, "ENx done");
    }

    #[test]
    fn the_earliest_of_several_stops_wins_and_text_after_is_dropped() {
        let (_, stopped, text) = run(&["b", "xa"], &["1xab2"]);
        assert!(stopped);
        assert_eq!(text, "1");
        let (_, _, text) = run(&["\n\n"], &["a\n", "\nb"]);
        assert_eq!(text, "a");
    }

    #[test]
    fn multibyte_stops_and_text() {
        let (sent, stopped, text) = run(&["猫咪"], &["一只猫", "咪在睡"]);
        assert_eq!(sent[0], "一只");
        assert!(stopped);
        assert_eq!(text, "一只");
        let (_, stopped, text) = run(&["猫咪"], &["一只猫", "在睡"]);
        assert!(!stopped);
        assert_eq!(text, "一只猫在睡");
    }
}
