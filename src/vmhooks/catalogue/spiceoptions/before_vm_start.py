#!/usr/bin/python3
"""spiceoptions: tune the SPICE display of the VM.

spiceoptions={'image': {'compression': 'glz'}, 'streaming': {'mode': 'filter'}}

Each key is a child element of <graphics type='spice'>, its value the
attributes to set on it:
  <graphics type='spice' ...>
    <image compression='glz'/>
    <streaming mode='filter'/>
An element already there gets those attributes (others kept). libvirt
knows image, jpeg, zlib, playback, streaming, clipboard, mouse,
filetransfer and gl; other names are added too, with a note. No SPICE
graphics: nothing to do. A malformed value: exit 1.
"""
import ast

import hooking
import vmhooks_catalogue

ELEMENTS = ("image", "jpeg", "zlib", "playback", "streaming", "clipboard", "mouse",
            "filetransfer", "gl")


def parse(value):
    try:
        options = ast.literal_eval(value.strip())
    except Exception:  # SyntaxError, ValueError, RecursionError...
        raise ValueError("not a Python dict literal")
    if not isinstance(options, dict):
        raise ValueError("not a dict")
    for element, attributes in options.items():
        if not isinstance(element, str) or not element.isidentifier():
            raise ValueError("element name %r" % (element,))
        if not isinstance(attributes, dict) or not attributes:
            raise ValueError("%s: expected a dict of attributes" % element)
        for name, item in attributes.items():
            if not isinstance(name, str) or not name.isidentifier():
                raise ValueError("%s: attribute name %r" % (element, name))
            if not isinstance(item, (str, int, float)) or isinstance(item, bool):
                raise ValueError("%s.%s: the value must be a string" % (element, name))
    return options


def main():
    options = vmhooks_catalogue.property_or_exit("spiceoptions", parse)
    if options is None:
        return
    unknown = [element for element in options if element not in ELEMENTS]
    if unknown:
        hooking.log("spiceoptions: note: libvirt may not know <%s>" % ">, <".join(unknown))
    domxml = hooking.read_domxml()
    spice = [graphics for graphics in domxml.getElementsByTagName("graphics")
             if graphics.getAttribute("type") == "spice"]
    if not spice:
        hooking.log("spiceoptions: the VM has no SPICE graphics, doing nothing")
        return
    for graphics in spice:
        for element, attributes in options.items():
            node = vmhooks_catalogue.ensure_child(domxml, graphics, element)
            for name, item in attributes.items():
                node.setAttribute(name, str(item))
    hooking.log("spiceoptions: set %s" % ", ".join(
        "%s %s" % (element, " ".join("%s=%s" % kv for kv in attrs.items()))
        for element, attrs in options.items()))
    hooking.write_domxml(domxml)


if __name__ == "__main__":
    main()
