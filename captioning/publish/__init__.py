"""Captions written into photos and out to the web: metadata (XMP / IPTC / EXIF via ExifTool), alt text, exports.
"""
