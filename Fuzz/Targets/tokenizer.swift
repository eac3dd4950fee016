// The tokenizer on hostile vocabularies: a GGUF metadata dictionary decoded from the input
// (pieces, scores, token types, special ids and flags, some of them of the wrong GGUF type), then
// encode and decode of a text from the input, decode of arbitrary (also invalid) ids, per-id
// lookups and the streaming decoder. Every id encode returns must be valid.
//
// Input layout (bytes past the end read as 0):
//   0     flags: 1 add_bos, 2 add_eos, 4 add_space_prefix, 8 parseSpecial, 16 renderSpecial,
//                32 removeSpecial, 64 scores present, 128 token types present
//   1     flags: 1 scores as i32 (else f32), 2 bos id, 4 eos id, 8 unknown id, 16 padding id present,
//                32 the add_* flags present, 64 wrong GGUF types (tokens as i32, ids as strings,
//                flags as u8), 128 model 'gpt2' instead of 'llama'
//   2..5  bos, eos, unknown, padding id (i8)
//   6..7  text length (u16 little-endian), then the text
//   then  tokens until the end: piece length (u8), type (u8, mod 8; 7 is no type), score (i8), piece
import PunaCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    var r = InputReader(data, size)
    let f0 = r.byte(), f1 = r.byte()
    let specials = (0..<4).map { _ in Int8(bitPattern: r.byte()) }
    let textLength = Int(r.byte()) | Int(r.byte()) << 8
    let text = r.take(textLength)
    var pieces: [GGUFValue] = [], scores: [GGUFValue] = [], types: [GGUFValue] = []
    while r.remaining > 0 {
        let length = Int(r.byte()), type = Int32(r.byte() % 8), score = Int8(bitPattern: r.byte())
        pieces.append(.string(String(decoding: r.take(length), as: UTF8.self)))
        scores.append(f1 & 1 != 0 ? .int32(Int32(score)) : .float32(Float(score) / 4))
        types.append(.int32(type))
    }
    let wrong = f1 & 64 != 0
    var metadata: [String: GGUFValue] = [
        Tokenizer.modelKey: .string(f1 & 128 != 0 ? "gpt2" : "llama"),
        Tokenizer.tokensKey: wrong ? .array(.int32, pieces.indices.map { .int32(Int32($0)) }) : .array(.string, pieces),
    ]
    if f0 & 64 != 0 { metadata[Tokenizer.scoresKey] = .array(f1 & 1 != 0 ? .int32 : .float32, scores) }
    if f0 & 128 != 0 { metadata[Tokenizer.tokenTypeKey] = .array(.int32, types) }
    let idKeys = ["bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id"]
    for (i, key) in idKeys.enumerated() where f1 & (2 << i) != 0 {
        metadata["tokenizer.ggml." + key] = wrong ? .string("\(specials[i])") : .int32(Int32(specials[i]))
    }
    if f1 & 32 != 0 {
        for (i, key) in ["add_bos_token", "add_eos_token", "add_space_prefix"].enumerated() {
            metadata["tokenizer.ggml." + key] = wrong ? .uint8(f0 >> i & 1) : .bool(f0 >> i & 1 != 0)
        }
    }
    let tokenizer: Tokenizer
    do throws(PunaError) { tokenizer = try Tokenizer(metadata: metadata, source: "fuzz") } catch { return 0 }

    let n = tokenizer.vocabSize
    let ids = tokenizer.encode(utf8: text, addBOS: f0 & 1 != 0, addEOS: f0 & 2 != 0, parseSpecial: f0 & 8 != 0)
    for id in ids { precondition(tokenizer.isValid(id), "encode returned id \(id) outside the \(n)-token vocabulary") }
    _ = tokenizer.encode(String(decoding: text, as: UTF8.self))
    _ = tokenizer.decode(ids, removeSpecial: f0 & 32 != 0, renderSpecial: f0 & 16 != 0)
    // The text bytes as ids, shifted to include -2 and -1 and ids past the end.
    let raw = text.map { Int32($0) - 2 }
    _ = tokenizer.decodeBytes(raw, removeSpecial: f0 & 32 != 0, renderSpecial: f0 & 16 != 0)
    var stream = TextStreamDecoder(tokenizer: tokenizer, renderSpecial: f0 & 16 != 0, stripsLeadingSpace: f0 & 4 != 0)
    for id in ids + raw { _ = stream.append(id) }
    _ = stream.flush()
    for id in Int32(-1)...Int32(min(n, 300)) {
        _ = tokenizer.tokenType(id); _ = tokenizer.score(id); _ = tokenizer.isControl(id)
        let piece = tokenizer.piece(id)
        _ = tokenizer.pieceBytes(id, renderSpecial: true)
        if tokenizer.isValid(id), let back = tokenizer.id(ofPiece: piece) { precondition(tokenizer.isValid(back)) }
    }
    return 0
}
