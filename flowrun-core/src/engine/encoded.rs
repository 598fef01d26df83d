//! Runs of registered tasks submitted by key with serialized arguments (by a
//! worker process asking its flow to run more work, or a Dask client). They
//! go through the same engine as typed submissions: states, retries,
//! timeouts, logging, flow accounting. Their value is the serialized result.

use std::sync::OnceLock;

use bytes::Bytes;

use crate::run::error::{TaskError, TaskErrorKind};
use crate::run::record::{RunRef, ValueFns};
use crate::task::args::{ArgSlot, ArgsTuple};
use crate::task::{CallConfig, Invocation, SerializedFns, Task, TaskMeta, TaskSupport};

/// The arguments of an encoded call, resolved to bytes.
#[derive(Clone)]
pub(crate) struct EncodedArgs {
    key: &'static str,
    slots: Vec<Bytes>,
}

/// The arguments of an encoded call as submitted.
pub(crate) struct EncodedInputs {
    pub(crate) key: &'static str,
    pub(crate) slots: Vec<ArgSlot>,
}

impl ArgsTuple for EncodedArgs {
    type Inputs = EncodedInputs;

    fn upstreams(inputs: &EncodedInputs, out: &mut Vec<RunRef>) {
        for slot in &inputs.slots {
            if let ArgSlot::Upstream(r) = slot {
                out.push(r.clone());
            }
        }
    }

    fn resolve(inputs: EncodedInputs) -> Result<Self, TaskError> {
        let slots = inputs
            .slots
            .into_iter()
            .map(|slot| match slot {
                ArgSlot::Bytes(b) => Ok(b),
                ArgSlot::Upstream(up) => up.encoded_result(),
            })
            .collect::<Result<_, _>>()?;
        Ok(EncodedArgs {
            key: inputs.key,
            slots,
        })
    }
}

/// The task behind encoded calls. Its static description is never used:
/// each call carries the description of the registered task it runs.
pub(crate) struct EncodedTask {
    config: CallConfig,
}

impl Task for EncodedTask {
    type Args = EncodedArgs;
    type Raw = Result<Bytes, TaskError>;
    type Output = Bytes;

    fn meta() -> &'static TaskMeta {
        static META: OnceLock<TaskMeta> = OnceLock::new();
        META.get_or_init(|| TaskMeta::builder("flowrun::encoded", "encoded").build())
    }

    fn invoke(args: EncodedArgs) -> Invocation<Self::Raw> {
        let slots: Vec<&[u8]> = args.slots.iter().map(|b| &b[..]).collect();
        let result = match crate::task::registry::registry().get(args.key) {
            Some(entry) => entry.run(&slots).map(Bytes::from),
            None => Err(unknown(args.key)),
        };
        Invocation::Ready(result)
    }

    fn outcome(raw: Self::Raw) -> Result<Bytes, TaskError> {
        raw
    }

    fn failure_message(raw: &Self::Raw) -> Option<String> {
        raw.as_ref().err().map(|e| e.message().to_owned())
    }

    fn output_ref(raw: &Self::Raw) -> Option<&Bytes> {
        raw.as_ref().ok()
    }

    fn raw_from_output(value: Bytes) -> Self::Raw {
        Ok(value)
    }

    fn support() -> &'static TaskSupport<Self> {
        static SUPPORT: OnceLock<TaskSupport<EncodedTask>> = OnceLock::new();
        SUPPORT.get_or_init(|| TaskSupport {
            args_clone: Some(EncodedArgs::clone),
            result: ValueFns {
                clone: Some(Bytes::clone),
                encode: Some(|b: &Bytes| Ok(b.to_vec())),
                decode: Some(|b: &[u8]| Ok(Bytes::copy_from_slice(b))),
                type_name: "bytes",
            },
            serialized: Ok(SerializedFns {
                encode_inputs: |inputs: &EncodedInputs| Ok(inputs.slots.clone()),
                run: |_| {
                    Err(TaskError::new(
                        TaskErrorKind::Runner,
                        "encoded calls are run by key",
                    ))
                },
                run_held: |_| {
                    Err(TaskError::new(
                        TaskErrorKind::Runner,
                        "encoded calls are run by key",
                    ))
                },
            }),
        })
    }

    fn config(&self) -> &CallConfig {
        &self.config
    }
}

fn unknown(key: &str) -> TaskError {
    TaskError::new(
        TaskErrorKind::Runner,
        format!("no task is registered as '{key}' in this program"),
    )
}

/// Submits a run of the task registered as `key` into `flow`.
pub(crate) fn submit(
    flow: &std::sync::Arc<crate::flow::registry::FlowShared>,
    key: &str,
    args: Vec<ArgSlot>,
    config: &CallConfig,
) -> Result<crate::run::future::TaskFuture<Bytes>, TaskError> {
    let entry = crate::task::registry::registry()
        .get(key)
        .ok_or_else(|| unknown(key))?;
    let meta = entry.meta();
    let inputs = EncodedInputs {
        key: meta.key,
        slots: args,
    };
    Ok(crate::engine::driver::submit_in::<EncodedTask>(
        flow,
        meta,
        EncodedTask::support(),
        config,
        inputs,
    ))
}
