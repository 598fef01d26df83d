//! Readable names: `brave-otter` for flow runs, `count-to` for flows.

const ADJECTIVES: &[&str] = &[
    "able", "agile", "amber", "ancient", "azure", "bold", "brave", "bright", "brisk", "calm",
    "candid", "cheerful", "clever", "cosmic", "crimson", "curious", "daring", "dapper", "eager",
    "earnest", "electric", "fearless", "festive", "fluffy", "gentle", "gilded", "glowing",
    "golden", "graceful", "hardy", "honest", "humble", "jolly", "keen", "kind", "lively", "lucky",
    "mellow", "merry", "mighty", "nimble", "noble", "olive", "patient", "plucky", "polite",
    "proud", "quick", "quiet", "radiant", "rapid", "rustic", "sage", "scarlet", "serene", "sharp",
    "shiny", "silver", "sincere", "smart", "snappy", "spry", "steady", "stellar", "sturdy",
    "sunny", "swift", "tidy", "tranquil", "upbeat", "valiant", "vivid", "warm", "wise", "witty",
    "zealous",
];

const ANIMALS: &[&str] = &[
    "albatross",
    "alpaca",
    "antelope",
    "badger",
    "beaver",
    "bison",
    "bobcat",
    "buffalo",
    "camel",
    "caribou",
    "cheetah",
    "coyote",
    "crane",
    "dolphin",
    "eagle",
    "egret",
    "falcon",
    "ferret",
    "finch",
    "flamingo",
    "fox",
    "gazelle",
    "gecko",
    "gibbon",
    "heron",
    "hedgehog",
    "ibex",
    "jackal",
    "jaguar",
    "kestrel",
    "koala",
    "lemur",
    "leopard",
    "llama",
    "lynx",
    "macaw",
    "marmot",
    "meerkat",
    "mongoose",
    "moose",
    "narwhal",
    "ocelot",
    "orca",
    "osprey",
    "otter",
    "owl",
    "panda",
    "pelican",
    "penguin",
    "puffin",
    "quokka",
    "raccoon",
    "raven",
    "reindeer",
    "salmon",
    "seal",
    "shoebill",
    "sparrow",
    "stork",
    "swan",
    "tapir",
    "tiger",
    "toucan",
    "turtle",
    "urchin",
    "vulture",
    "walrus",
    "weasel",
    "wombat",
    "yak",
    "zebra",
];

/// A random `adjective-animal` name for a flow run.
pub fn random_run_name() -> String {
    let a = ADJECTIVES[fastrand::usize(..ADJECTIVES.len())];
    let b = ANIMALS[fastrand::usize(..ANIMALS.len())];
    format!("{a}-{b}")
}

/// A random id in UUID v4 form.
pub fn random_id() -> String {
    let hi = fastrand::u64(..);
    let lo = fastrand::u64(..);
    let v = (u128::from(hi) << 64) | u128::from(lo);
    let v = (v & !(0xF << 76)) | (0x4 << 76);
    let v = (v & !(0x3 << 62)) | (0x2 << 62);
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// The display name of a flow function: underscores become hyphens.
///
/// ```
/// assert_eq!(flowrun_core::names::flow_name("count_to"), "count-to");
/// ```
pub fn flow_name(function: &str) -> String {
    function.trim_start_matches("r#").replace('_', "-")
}
