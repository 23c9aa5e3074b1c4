# ExifTool user configuration loaded by captioning/publish/metadata.py (exiftool -config this-file).
# IPTC Photo Metadata 2021.1 added alt-text fields to the Iptc4xmpExt namespace; ExifTool learned them in 12.60,
# but Debian 12 ships 12.57: declare them here so older ExifTools write and read them too (newer ones agree).
%Image::ExifTool::UserDefined = (
    'Image::ExifTool::XMP::iptcExt' => {
        AltTextAccessibility  => { Writable => 'lang-alt' },
        ExtDescrAccessibility => { Writable => 'lang-alt' },
    },
);
1;  # end
