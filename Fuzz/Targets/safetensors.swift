// The safetensors reader on arbitrary bytes (the input is the whole file), every tensor's bytes,
// then the same file as a PEFT adapter's adapter_model.safetensors next to a fixed, valid
// adapter_config.json (Fuzz/data/adapter_config.json): LoRAAdapter.inspect pairs lora_A/lora_B
// tensors by name and checks their shapes, and prepareForUnmergedUse transposes every B.
import PunaCore

private let configWritten: Bool = {
    Scratch.write("peft/adapter_config.json", fuzzData("adapter_config.json"))
    return true
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    precondition(configWritten)
    let path = Scratch.write("peft/adapter_model.safetensors", data, size)
    let file: SafetensorsFile
    do throws(PunaError) {
        file = try SafetensorsFile(file: MappedFile(path: path))
    } catch {
        return 0
    }
    _ = file.tensorBytes; _ = file.metadata.count
    var sum: UInt8 = 0
    for t in file.tensors {
        _ = t.elementCount; _ = t.ggmlType
        precondition(file.tensorInfo(t.name) != nil)
        let bytes = file.data(of: t)
        if let first = bytes.first, let last = bytes.last { sum &+= first &+ last }   // ASan checks both ends
    }
    _ = sum
    if let adapter = try? LoRAAdapter.inspect(path: path) {
        _ = adapter.targets; _ = adapter.warnings; _ = adapter.tensorBytes
        adapter.prepareForUnmergedUse()
        _ = adapter.transposedBytes
    }
    return 0
}
