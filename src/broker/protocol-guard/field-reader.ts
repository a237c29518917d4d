/**
 * Reads the fields of a packet body the guard has collected. One reader per
 * guard, reset for each body, so that judging a packet allocates nothing
 * but the views of the strings it checks.
 */

/** What varint() returns when the integer runs past the end or past four bytes. */
export const VARINT_TRUNCATED = -1;
/** What varint() returns for an encoding longer than it needs to be [MQTT-1.5.5-1]. */
export const VARINT_NOT_MINIMAL = -2;

export class FieldReader {
  #bytes: Buffer = Buffer.alloc(0);
  #position = 0;
  #end = 0;

  /** Reads `bytes` from the start to `end` (all of it by default). */
  reset(bytes: Buffer, end = bytes.length): this {
    this.#bytes = bytes;
    this.#position = 0;
    this.#end = end;
    return this;
  }

  get position(): number {
    return this.#position;
  }

  get done(): boolean {
    return this.#position >= this.#end;
  }

  get left(): number {
    return this.#end - this.#position;
  }

  /** Reads up to `end` only, for a section (properties) inside the body; returns the previous end. */
  narrow(end: number): number {
    const previous = this.#end;
    this.#end = end;
    return previous;
  }

  byte(): number | null {
    if (this.#position + 1 > this.#end) return null;
    return this.#bytes[this.#position++] as number;
  }

  uint16(): number | null {
    if (this.#position + 2 > this.#end) return null;
    const value = this.#bytes.readUInt16BE(this.#position);
    this.#position += 2;
    return value;
  }

  uint32(): number | null {
    if (this.#position + 4 > this.#end) return null;
    const value = this.#bytes.readUInt32BE(this.#position);
    this.#position += 4;
    return value;
  }

  /**
   * A Variable Byte Integer (MQTT 5, 1.5.5): 7 bits a byte, at most four
   * bytes; VARINT_TRUNCATED or VARINT_NOT_MINIMAL when it is not one.
   */
  varint(): number {
    let value = 0;
    let multiplier = 1;
    for (let count = 1; count <= 4; count++) {
      if (this.#position >= this.#end) return VARINT_TRUNCATED;
      const byte = this.#bytes[this.#position++] as number;
      value += (byte & 0x7f) * multiplier;
      if ((byte & 0x80) === 0) return count > 1 && byte === 0 ? VARINT_NOT_MINIMAL : value;
      multiplier *= 128;
    }
    return VARINT_TRUNCATED;
  }

  /** A two-byte length and that many bytes (UTF-8 string or binary data) [MQTT-1.5.3]. */
  string(): Buffer | null {
    const length = this.uint16();
    if (length === null || this.#position + length > this.#end) return null;
    const value = this.#bytes.subarray(this.#position, this.#position + length);
    this.#position += length;
    return value;
  }

  /** Skips a two-byte length and that many bytes (binary data); false when it runs past the end. */
  skipString(): boolean {
    const length = this.uint16();
    if (length === null || this.#position + length > this.#end) return false;
    this.#position += length;
    return true;
  }
}
