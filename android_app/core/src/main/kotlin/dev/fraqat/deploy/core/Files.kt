package dev.fraqat.deploy.core

import java.io.File
import java.io.IOException
import java.nio.file.Files
import java.nio.file.StandardCopyOption
import java.security.MessageDigest

object FileTools {
    fun sha256(file: File): String {
        val digest = MessageDigest.getInstance("SHA-256")
        file.inputStream().use { input ->
            val buffer = ByteArray(1 shl 16)
            while (true) {
                val n = input.read(buffer)
                if (n < 0) break
                digest.update(buffer, 0, n)
            }
        }
        return digest.digest().joinToString("") { "%02x".format(it.toInt() and 0xFF) }
    }

    /** Write through a temporary file beside [file] and a rename, so a reader never sees half of it. */
    fun writeAtomic(file: File, bytes: ByteArray) {
        file.parentFile?.mkdirs()
        val tmp = File(file.parentFile, ".${file.name}.tmp")
        tmp.outputStream().use {
            it.write(bytes)
            it.fd.sync()
        }
        try {
            Files.move(tmp.toPath(), file.toPath(), StandardCopyOption.ATOMIC_MOVE, StandardCopyOption.REPLACE_EXISTING)
        } catch (e: UnsupportedOperationException) {
            if (!tmp.renameTo(file)) throw IOException("cannot rename $tmp to $file")
        }
    }

    fun writeJsonAtomic(file: File, value: Any?) = writeAtomic(file, (Json.write(value) + "\n").toByteArray(Charsets.UTF_8))

    /** Is this the error a full disk gives (ENOSPC)? */
    fun isStorageFull(e: Throwable): Boolean =
        generateSequence(e) { it.cause }.any { (it.message ?: "").contains("No space left", ignoreCase = true) || (it.message ?: "").contains("ENOSPC") }

    private val QNN_BUILD = Regex("v(\\d+\\.\\d+\\.\\d+\\.\\d{6,})")

    /**
     * The QNN (QAIRT) build id in a QNN library's bytes, e.g. "2.51.0.260929181845": the string the CLI records as
     * `versions.qnn_build` in compile.json and as `model.qnn_version` in the request (`compile/htp.py` reads it
     * the same way from libQnnSaver / libQnnSystem).
     */
    fun qnnBuildId(bytes: ByteArray): String? = QNN_BUILD.find(String(bytes, Charsets.ISO_8859_1))?.groupValues?.get(1)

    /** The build id of the first of [names] found in [dir] (the app's native library folder). */
    fun qnnBuildId(dir: File, names: List<String> = listOf("libQnnSystem.so", "libQnnHtp.so", "libQnnSaver.so")): String? =
        names.map { File(dir, it) }.filter { it.isFile }.firstNotNullOfOrNull { qnnBuildId(it.readBytes()) }
}
