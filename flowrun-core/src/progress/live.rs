//! The live display on a terminal: one block per flow run (a header and a
//! line per task name) drawn by `indicatif` under the program's output.
//!
//! While a block is shown, the program's stderr (and stdout, when it is the
//! same terminal) go through a pipe whose lines `indicatif` prints above the
//! blocks, so log lines, `println!` in tasks and panic messages never land
//! inside the display.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, Sender};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::format;
use super::tally::TaskRunTally;
use crate::plumbing::lock;

/// Short flows finish before the display would show: no flicker for them.
const SHOW_AFTER: Duration = Duration::from_millis(250);
const TICK: Duration = Duration::from_millis(100);

/// Whether stderr is a terminal we may draw on, decided once: while a
/// display is shown stderr is a pipe, and flows starting then must still
/// see the terminal.
pub(super) fn stderr_is_terminal() -> bool {
    static TERMINAL: OnceLock<bool> = OnceLock::new();
    *TERMINAL.get_or_init(|| {
        std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb")
    })
}

fn color() -> bool {
    stderr_is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// The live block of one flow run, drawn by its own thread until dropped.
pub(super) struct LiveDisplay {
    stop: Option<Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl LiveDisplay {
    pub(super) fn start(label: String, tally: Arc<TaskRunTally>) -> Option<LiveDisplay> {
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let thread = std::thread::Builder::new()
            .name("flowrun-progress".into())
            .spawn(move || {
                let began = Instant::now();
                let mut shown: Option<ProgressBar> = None;
                let mut frame = 0usize;
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(TICK) {
                    if shown.is_none() {
                        if began.elapsed() < SHOW_AFTER {
                            continue;
                        }
                        shown = screen::acquire().map(|mp| {
                            let bar = ProgressBar::new_spinner().with_style(
                                ProgressStyle::with_template("{msg}")
                                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                            );
                            mp.add(bar)
                        });
                        if shown.is_none() {
                            // No terminal after all: the summary line remains.
                            return;
                        }
                    }
                    if let Some(bar) = &shown {
                        frame += 1;
                        let (rows, cols) = screen::size();
                        bar.set_message(format::block(
                            &label,
                            began.elapsed(),
                            &tally.counts(),
                            frame,
                            format::Layout {
                                rows,
                                cols,
                                color: color(),
                            },
                        ));
                    }
                }
                if let Some(bar) = shown {
                    bar.finish_and_clear();
                    screen::release(&bar);
                }
            })
            .ok()?;
        Some(LiveDisplay {
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Clears the block (and gives the terminal back when it was the last).
    pub(super) fn finish(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LiveDisplay {
    fn drop(&mut self) {
        self.finish();
    }
}

/// The terminal shared by every flow run's block.
mod screen {
    use super::*;

    struct Screen {
        mp: MultiProgress,
        users: usize,
        term: console::Term,
        #[cfg(unix)]
        redirect: Option<super::super::redirect::Redirect>,
    }

    fn screen() -> &'static Mutex<Option<Screen>> {
        static SCREEN: OnceLock<Mutex<Option<Screen>>> = OnceLock::new();
        SCREEN.get_or_init(|| Mutex::new(None))
    }

    /// The shared display, set up on first use.
    pub(super) fn acquire() -> Option<MultiProgress> {
        let mut guard = lock(screen());
        if guard.is_none() {
            *guard = Some(open()?);
        }
        let s = guard.as_mut()?;
        s.users += 1;
        Some(s.mp.clone())
    }

    /// Terminal rows and columns.
    pub(super) fn size() -> (u16, u16) {
        lock(screen())
            .as_ref()
            .and_then(|s| s.term.size_checked())
            .unwrap_or((24, 80))
    }

    /// Removes `bar`; the last user gives the terminal back.
    pub(super) fn release(bar: &ProgressBar) {
        let mut guard = lock(screen());
        let Some(s) = guard.as_mut() else { return };
        s.mp.remove(bar);
        s.users -= 1;
        if s.users > 0 {
            return;
        }
        if let Some(s) = guard.take() {
            #[cfg(unix)]
            if let Some(r) = s.redirect {
                r.stop();
            }
            let _ = s.mp.clear();
        }
    }

    #[cfg(unix)]
    fn open() -> Option<Screen> {
        use super::super::redirect;
        let terminal = redirect::Terminal::of_stderr().ok()?;
        let term = terminal.term().ok()?;
        let mp = MultiProgress::with_draw_target(ProgressDrawTarget::term(term.clone(), 20));
        let printer = mp.clone();
        let sink: redirect::Sink = Arc::new(move |text: &str| {
            let _ = printer.println(text);
        });
        let redirect = redirect::Redirect::start(&terminal, sink).ok();
        Some(Screen {
            mp,
            users: 0,
            term,
            redirect,
        })
    }

    #[cfg(not(unix))]
    fn open() -> Option<Screen> {
        let term = console::Term::stderr();
        Some(Screen {
            mp: MultiProgress::with_draw_target(ProgressDrawTarget::term(term.clone(), 20)),
            users: 0,
            term,
        })
    }
}
