use herald::Event;

#[derive(Event)]
enum Twice {
    #[event(name = "same")]
    One,
    #[event(name = "same")]
    Two,
}

fn main() {}
