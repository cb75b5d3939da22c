//! The protobuf codec every Gantry service and client uses: prost's, with
//! smaller starting buffers.
//!
//! tonic gives each stream an 8 KiB decode buffer and each outgoing body an
//! 8 KiB encode buffer, kept for the stream's life. An agent stream lives
//! as long as the agent and mostly carries messages of a few hundred bytes
//! (heartbeats, assignments, reports), so a replica holding thousands of
//! them spent about 16 KiB each on buffers that stay almost empty. Buffers
//! start at 1 KiB and grow as needed: a decoder reserves a whole message
//! at once from its length prefix, and an encoder grows by doubling, so
//! large messages cost no more copies than before.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Starting size of a stream's encode and decode buffers.
pub const BUFFER_BYTES: usize = 1024;
/// Encoded bytes gathered before a streaming body yields them (tonic's default).
pub const YIELD_BYTES: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_BYTES, YIELD_BYTES)
}

/// [`ProstCodec`] with [`BUFFER_BYTES`] starting buffers.
#[derive(Debug, Clone)]
pub struct GantryCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for GantryCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for GantryCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
