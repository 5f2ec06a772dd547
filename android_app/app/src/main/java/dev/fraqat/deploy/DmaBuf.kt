package dev.fraqat.deploy

import java.io.File

/**
 * DMA-BUF memory held by this process. The QNN HTP backend shares its buffers with the NPU through DMA-BUF heaps
 * (FastRPC / rpcmem); that memory is counted neither in PSS nor in VmHWM, so the app adds it up itself from the
 * kernel's per-process accounting:
 *  - `/proc/self/fdinfo/<fd>`: a DMA-BUF file descriptor's entry has `exp_name:` (the exporting heap), `size:` (bytes)
 *    and `ino:` (the buffer's inode, which identifies a buffer shared by several descriptors);
 *  - `/proc/self/maps`: buffers mapped but whose descriptor was closed show as `/dmabuf:` or `anon_inode:dmabuf`
 *    mappings; they count by the length mapped.
 * Each buffer counts once (by inode).
 */
object DmaBuf {
    /** Bytes of DMA-BUF held: [fdinfos] the text of each fdinfo entry, [maps] the text of /proc/self/maps. */
    fun bytes(fdinfos: Sequence<String>, maps: String): Long {
        val sizes = HashMap<String, Long>()
        for (info in fdinfos) {
            val fields = info.lineSequence().mapNotNull { line ->
                val colon = line.indexOf(':')
                if (colon <= 0) null else line.substring(0, colon).trim() to line.substring(colon + 1).trim()
            }.toMap()
            if (!fields.containsKey("exp_name")) continue
            val size = fields["size"]?.toLongOrNull() ?: continue
            sizes[fields["ino"] ?: "fd${sizes.size}"] = size
        }
        val mapped = HashMap<String, Long>()
        for (line in maps.lineSequence()) {
            val parts = line.trim().split(Regex("\\s+"), limit = 6)
            if (parts.size < 6 || !parts[5].contains("dmabuf")) continue
            val range = parts[0].split('-')
            if (range.size != 2) continue
            val length = (range[1].toLongOrNull(16) ?: continue) - (range[0].toLongOrNull(16) ?: continue)
            if (parts[4] !in sizes) mapped[parts[4]] = (mapped[parts[4]] ?: 0L) + length
        }
        return sizes.values.sum() + mapped.values.sum()
    }

    /** MB of DMA-BUF this process holds now, or null when /proc/self/fdinfo cannot be read. */
    fun currentMb(proc: File = File("/proc/self")): Double? = runCatching {
        val fds = File(proc, "fdinfo").listFiles() ?: return null
        val infos = fds.asSequence().mapNotNull { runCatching { it.readText() }.getOrNull() }
        val maps = runCatching { File(proc, "maps").readText() }.getOrDefault("")
        bytes(infos, maps) / (1024.0 * 1024.0)
    }.getOrNull()
}
