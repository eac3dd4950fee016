// The GGUF reader on arbitrary bytes (the input is the whole file), then what reads a parsed
// GGUFFile without loading weights: the accessors, every tensor's bytes, ModelConfig, the memory
// estimate, the tokenizer from its metadata, and the GGUF LoRA reader (LoRAAdapter.inspect).
import PunaCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let path = Scratch.write("input.gguf", data, size)
    let gguf: GGUFFile
    do throws(PunaError) {
        gguf = try GGUFFile(file: MappedFile(path: path))
    } catch {
        return 0
    }
    _ = gguf.architecture; _ = gguf.tensorBytes
    for key in gguf.keys {
        _ = gguf.int(key); _ = gguf.double(key); _ = gguf.float(key); _ = gguf.string(key); _ = gguf.bool(key)
        _ = gguf.stringArray(key); _ = gguf.floatArray(key); _ = gguf.intArray(key)
        if let v = gguf[key] { _ = v.type.name; _ = v.arrayValue?.count }
    }
    var sum: UInt8 = 0
    for t in gguf.tensors {
        _ = t.elementCount; _ = t.rowLength; _ = t.rowCount
        precondition(gguf.tensorInfo(t.name) != nil)
        let bytes = gguf.data(of: t)
        if let first = bytes.first, let last = bytes.last { sum &+= first &+ last }   // ASan checks both ends
    }
    _ = sum
    if let config = try? ModelConfig(gguf: gguf) {
        _ = config.headDimension; _ = config.kvDimension
        _ = MemoryEstimate.llama(gguf: gguf, config: config, settings: .init(context: 512))
    }
    if let tokenizer = try? Tokenizer(gguf: gguf) {
        let ids = tokenizer.encode("Hello world, ünïcödé 🙂 <s></s>\n\t 123", addBOS: true, addEOS: true, parseSpecial: true)
        _ = tokenizer.decode(ids, renderSpecial: true)
    }
    _ = try? LoRAAdapter.inspect(path: path)
    return 0
}
