//! Rough timing of field encrypt+decrypt. Ignored by default and never
//! asserts a time; run in release:
//! `cargo test --release --lib crypto::speed -- --ignored --nocapture`.
//! (bench/ holds the criterion benchmarks the issue asks for.)

use std::hint::black_box;
use std::time::Instant;

use super::*;

const BATCHES: u32 = 20;
const PER_BATCH: u32 = 5_000; // 20 x 5000 = 1e5 iterations

/// Best batch of `BATCHES`: other processes on a 2-core machine inflate the
/// mean; the fastest batch is the closest to the code's own cost.
fn time_per_iter(mut f: impl FnMut()) -> f64 {
    for _ in 0..PER_BATCH {
        f();
    }
    (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..PER_BATCH {
                f();
            }
            start.elapsed().as_secs_f64() * 1e9 / f64::from(PER_BATCH)
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "timing report, run in release with --nocapture"]
fn report_field_cipher_speed() {
    let dek = Dek::from_bytes([7; 32]);
    let col = ColumnId {
        tenant: "acme",
        schema: "public",
        table: "customers",
        column: "email",
    };
    for mode in [Mode::Randomized, Mode::Deterministic] {
        let c = FieldCipher::new(&dek, 1, &col, mode);
        for size in [64usize, 1024] {
            let pt = vec![0x5a; size];
            let env = c.encrypt(&pt);
            let both = time_per_iter(|| {
                let e = c.encrypt(black_box(&pt));
                black_box(c.decrypt(&e).ok());
            });
            let enc = time_per_iter(|| {
                black_box(c.encrypt(black_box(&pt)));
            });
            let dec = time_per_iter(|| {
                black_box(c.decrypt(black_box(&env)).ok());
            });
            let text = c.encrypt_text(&pt);
            let text_both = time_per_iter(|| {
                let t = c.encrypt_text(black_box(&pt));
                black_box(c.decrypt_text(t.as_bytes()).ok());
            });
            black_box(&text);
            println!(
                "{:13} {size:5} B: encrypt+decrypt {both:7.0} ns (encrypt {enc:6.0}, decrypt {dec:6.0}); text form {text_both:7.0} ns",
                mode.as_str()
            );
        }
    }
    let build = time_per_iter(|| {
        black_box(FieldCipher::new(
            &dek,
            1,
            black_box(&col),
            Mode::Deterministic,
        ));
    });
    println!("FieldCipher::new (HKDF + key schedule): {build:.0} ns");
    // What the prepared-instance mutex in SivEngine saves per call.
    let key = [9u8; 64];
    let siv_build = time_per_iter(|| {
        use aes_gcm::aead::KeyInit as _;
        black_box(aes_siv::siv::Aes256Siv::new(black_box(&key).into()));
    });
    println!("Aes256Siv::new (per-call construction): {siv_build:.0} ns");
    let nonce = time_per_iter(|| {
        let mut n = [0u8; 12];
        crate::protocol::scram::fill_random(&mut n);
        black_box(n);
    });
    println!("OS RNG 12-byte nonce: {nonce:.0} ns");
}
