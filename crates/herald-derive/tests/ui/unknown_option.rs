use herald::Event;

#[derive(Event)]
#[event(prefx = "typo")]
enum Typo {
    One,
}

fn main() {}
