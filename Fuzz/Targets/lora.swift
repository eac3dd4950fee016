// PEFT adapter_config.json parsing: the input is the config of a PEFT folder whose
// adapter_model.safetensors is a fixed, valid one (Fuzz/data/adapter_model.safetensors, rank 4,
// every LLaMA projection of 2 layers). The config parser is private to LoRA.swift, so this goes
// through its public entry, LoRAAdapter.inspect(path:), on the folder.
import PunaCore

private let folder: String = {
    let tensors = Scratch.write("peft/adapter_model.safetensors", fuzzData("adapter_model.safetensors"))
    return String(tensors.dropLast("/adapter_model.safetensors".count))
}()

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    Scratch.write("peft/adapter_config.json", data, size)
    if let adapter = try? LoRAAdapter.inspect(path: folder) {
        _ = adapter.rank; _ = adapter.alpha; _ = adapter.baseScale; _ = adapter.usesRSLoRA
        _ = adapter.targetModules; _ = adapter.targets; _ = adapter.warnings
        adapter.prepareForUnmergedUse()
        _ = adapter.transposedBytes
    }
    return 0
}
