package dev.fraqat.deploy

import android.content.Context
import android.os.Debug
import android.os.PowerManager
import dev.fraqat.deploy.core.DeviceProbe
import dev.fraqat.deploy.core.Memory
import java.io.File

/**
 * The app's own memory and thermal readings: PSS from Debug.getMemoryInfo, the peak RSS (VmHWM) from
 * /proc/self/status, the native heap in use (ONNX Runtime's and QNN's allocations live there), and
 * PowerManager's thermal status (0 none .. 6 shutdown).
 */
class AndroidProbe(private val context: Context) : DeviceProbe {
    override fun memory(): Memory {
        val info = Debug.MemoryInfo()
        Debug.getMemoryInfo(info)
        return Memory(
            peakPss = info.totalPss / 1024.0,
            peakRss = vmHwmMb(),
            nativeHeap = Debug.getNativeHeapAllocatedSize() / (1024.0 * 1024.0),
            source = "app",
        )
    }

    override fun thermalStatus(): Int? = runCatching { context.getSystemService(PowerManager::class.java).currentThermalStatus }.getOrNull()

    private fun vmHwmMb(): Double? = runCatching {
        File("/proc/self/status").readLines().firstOrNull { it.startsWith("VmHWM:") }?.split(Regex("\\s+"))?.get(1)?.toDouble()?.div(1024.0)
    }.getOrNull()
}
