"""Offline tools that make data: the synthetic actor and its live source, the RealSense recording
writer, the correspondence-table builder, the landmark evaluation and the docs montage.

They may import any stage of :mod:`facediff_ros.core`; the core never imports them.
"""
