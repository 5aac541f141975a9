"""The built-in plugins of mtd, registered through this distribution's ``mtd`` entry points exactly as a third
party's would be: the image, label, masked_image, representation and text modalities, the datasets and the
backbones. Each lives in its own module and registers itself through a ``@hookimpl`` function; importing this
package imports none of them.
"""
