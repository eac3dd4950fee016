import CPuna

/// Keys and values of every layer for the positions a sequence has seen so far.
/// Layout per layer: K and V are each [capacity][kvDimension] elements of `type` (f32 or f16),
/// allocated once for the whole context so memory use is known up front.
public final class KVCache {
    public let capacity: Int
    public let layers: Int
    public let kvDimension: Int
    public let type: GGMLType
    /// Positions filled so far; the next token goes at this position.
    public internal(set) var count = 0
    /// Keys and values of the layers that run on a Vulkan device (Vulkan.swift).
    var deviceCache: VulkanKVCache? = nil

    let rowBytes: Int
    private let keys: UnsafeMutableRawPointer
    private let values: UnsafeMutableRawPointer

    public static let supportedTypes: [GGMLType] = [.f32, .f16, .q8_0]

    public init(layers: Int, capacity: Int, kvDimension: Int, type: GGMLType) throws(PunaError) {
        guard KVCache.supportedTypes.contains(type) else {
            throw PunaError("KV cache type \(type.name) is not supported (use \(KVCache.supportedTypes.map { $0.name }.joined(separator: ", ")))")
        }
        guard let row = type.rowBytes(kvDimension) else {
            throw PunaError("KV width \(kvDimension) is not a whole number of \(type.name) blocks")
        }
        self.capacity = capacity
        self.layers = layers
        self.kvDimension = kvDimension
        self.type = type
        rowBytes = row
        let total = layers * capacity * row
        keys = UnsafeMutableRawPointer.allocate(byteCount: max(total, 1), alignment: 64)
        values = UnsafeMutableRawPointer.allocate(byteCount: max(total, 1), alignment: 64)
    }

    deinit {
        keys.deallocate()
        values.deallocate()
    }

    /// Bytes held by K and V together.
    public var byteCount: Int { 2 * layers * capacity * rowBytes }

    /// Forget positions from `position` on (e.g. to rewind a chat turn).
    public func truncate(to position: Int) {
        count = min(max(position, 0), count)
    }

    public func reset() { count = 0 }

    func keyRow(layer: Int, position: Int) -> UnsafeMutableRawPointer {
        keys + (layer * capacity + position) * rowBytes
    }

    func valueRow(layer: Int, position: Int) -> UnsafeMutableRawPointer {
        values + (layer * capacity + position) * rowBytes
    }

    /// Store `n` rows of f32 keys and values (each kvDimension wide) at positions start..<start+n.
    func store(layer: Int, start: Int, n: Int, keys k: UnsafePointer<Float>, values v: UnsafePointer<Float>) {
        for t in 0..<n {
            // The type was validated at init, so encode cannot fail here.
            try? type.encode(k + t * kvDimension, into: keyRow(layer: layer, position: start + t), count: kvDimension)
            try? type.encode(v + t * kvDimension, into: valueRow(layer: layer, position: start + t), count: kvDimension)
        }
    }
}
